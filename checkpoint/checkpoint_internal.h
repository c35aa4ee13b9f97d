// Internal: building blocks shared by the checkpoint readers (npz, safetensors,
// torch.save) and the format-dispatching front end in checkpoint.cc.
//
// Every reader treats its input as untrusted: sizes, offsets and strides read
// from a file are validated against the file before any allocation or read,
// and memory stays bounded by a small window whatever the tensor size.
#ifndef EMBSTORE_CHECKPOINT_CHECKPOINT_INTERNAL_H_
#define EMBSTORE_CHECKPOINT_CHECKPOINT_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint/tensor_reader.h"
#include "embstore/checkpoint.h"
#include "embstore/status.h"

namespace embstore::storage::ckpt {

// ---- dtypes ------------------------------------------------------------------

// Bytes per element of an importable dtype (4, 8, 2, 2); 0 for kOther.
int64_t ElementSize(SourceDType dtype);
// "f32", "f64", "f16", "bf16" (kOther: "other").
const char* SourceDTypeName(SourceDType dtype);
// Inverse of SourceDTypeName for the four floating names; kOther otherwise.
SourceDType SourceDTypeFromName(std::string_view name);

// Converts (exactly; f16/bf16 via codec/half.h) `count` little-endian elements of `dtype` at
// `src` (consecutive elements `src_stride_bytes` apart) to float32 at `dst` (`dst_stride` floats
// apart). REQUIRES: dtype != kOther. Returns false when a finite f64 value lies beyond the
// float32 range (it would become inf); the caller refuses the import.
bool ConvertToFloat(SourceDType dtype, const uint8_t* src, int64_t src_stride_bytes, int64_t count,
                    float* dst, int64_t dst_stride);
// The error for a float64 value beyond float32 in rows [first, first + count) of `source`.
Status F64OverflowError(const std::string& source, int64_t first, int64_t count);

// ---- shape checks shared by every format ----------------------------------

// Product of the dimensions, or nullopt when a dimension is negative or the
// product overflows int64.
std::optional<int64_t> NumElements(const std::vector<int64_t>& shape);
// "[3, 4]".
std::string ShapeString(const std::vector<int64_t>& shape);
// Fails with NotSupported unless `entry.dtype` is one of f32/f64/f16/bf16, and with
// InvalidArgument unless the tensor is 1-D or 2-D. On success sets rows x dim
// (1-D tensors are N x 1).
Status CheckImportable(const TensorEntry& entry, int64_t* rows, int64_t* dim);

// ---- files -----------------------------------------------------------------

// A read-only file opened once and shared by the readers of its tensors.
// Thread-safe: ReadAt uses pread and keeps no position.
class File {
 public:
  ~File();
  File(const File&) = delete;
  File& operator=(const File&) = delete;

  // NotFound when the file does not exist, IOError for other failures,
  // InvalidArgument for a directory.
  static Result<std::shared_ptr<File>> Open(const std::string& path);
  // An anonymous temporary file (deleted when closed), opened read-write.
  static Result<std::shared_ptr<File>> CreateTemp();

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  // Reads exactly n bytes at `offset`; Corruption when the file ends first.
  Status ReadAt(uint64_t offset, void* buf, size_t n) const;
  // Appends n bytes (temp files only).
  Status Append(const void* buf, size_t n);

 private:
  File(int fd, std::string path, uint64_t size) : fd_(fd), path_(std::move(path)), size_(size) {}
  int fd_;
  std::string path_;
  uint64_t size_;
};

// The bytes of one tensor's backing store: a region of a file, or a member of a
// zip archive being decompressed.
class ByteSource {
 public:
  virtual ~ByteSource() = default;
  virtual uint64_t size() const = 0;
  // Reads [offset, offset + n). REQUIRES: offset + n <= size(). A sequential
  // source restarts from the beginning when asked to go backwards.
  virtual Status ReadAt(uint64_t offset, void* buf, size_t n) = 0;
  // True when ReadAt at arbitrary offsets is cheap (pread); false for a
  // forward-only decompression stream.
  virtual bool random_access() const = 0;
};

// [base, base + size) of a file. REQUIRES: base + size <= file->size().
std::unique_ptr<ByteSource> MakeFileRegionSource(std::shared_ptr<File> file, uint64_t base,
                                                 uint64_t size);

// Copies a (sequential) source into an anonymous temp file and returns a random
// access source over the copy. Memory stays bounded; disk use is source->size().
Result<std::unique_ptr<ByteSource>> SpillToTempFile(ByteSource& source);

// ---- strided tensors ---------------------------------------------------------

// A rows x dim view into a ByteSource holding elements of `dtype`: element
// (r, c) lives at element index offset + r * row_stride + c * col_stride.
struct TensorLayout {
  SourceDType dtype = SourceDType::kF32;
  int64_t rows = 0;
  int64_t dim = 0;
  int64_t offset = 0;      // in elements
  int64_t row_stride = 0;  // in elements, >= 0
  int64_t col_stride = 0;  // in elements, >= 0
};

// OK when every element of the view lies in the first `available_bytes` bytes
// of its source; Corruption naming `what` otherwise (also for negative values
// or arithmetic overflow).
Status ValidateLayout(const TensorLayout& layout, uint64_t available_bytes,
                      const std::string& what);

// Reads a validated layout in row chunks through a bounded window.
// Thread-compatible: one reader per thread.
class StridedTensorReader final : public TensorReader {
 public:
  // Default size of the read window; memory per reader stays at about this much.
  static constexpr size_t kDefaultWindowBytes = size_t{1} << 20;

  // REQUIRES: ValidateLayout(layout, source->size(), ...) is OK; dtype != kOther.
  // `window_bytes` is rounded to whole elements (tests pass tiny windows).
  StridedTensorReader(std::string source_name, const TensorLayout& layout,
                      std::unique_ptr<ByteSource> source,
                      size_t window_bytes = kDefaultWindowBytes);

  int64_t rows() const override { return layout_.rows; }
  int64_t dim() const override { return layout_.dim; }
  SourceDType source_dtype() const override { return layout_.dtype; }
  std::string source() const override { return source_name_; }
  Status ReadRows(int64_t first, int64_t count, float* out) override;

 private:
  // Makes [offset, offset + need) resident, reading up to `hint_end` ahead.
  Status Ensure(uint64_t offset, uint64_t need, uint64_t hint_end);

  std::string source_name_;
  TensorLayout layout_;
  std::unique_ptr<ByteSource> source_;
  size_t window_cap_;
  bool forward_friendly_;  // reads happen at increasing offsets within and across chunks
  std::vector<uint8_t> window_;
  uint64_t window_begin_ = 0;
  uint64_t window_end_ = 0;  // == window_begin_ when empty
};

// Reads element `index` of `source` (dtype "f32", "f64", "f16", "bf16", "int64",
// "int32", "int16", "int8", "uint8", "bool", ...) as a double.
Result<double> ReadElement(ByteSource& source, const std::string& dtype, int64_t index);

// ---- checkpoint files --------------------------------------------------------

// One opened checkpoint: its tensor list and a way to open each tensor.
class CheckpointFile {
 public:
  virtual ~CheckpointFile() = default;
  // Every tensor, in file order.
  virtual const std::vector<TensorEntry>& tensors() const = 0;
  // REQUIRES: index < tensors().size() and CheckImportable(tensors()[index]) is OK.
  virtual Result<std::unique_ptr<TensorReader>> OpenTensor(size_t index) = 0;
  // The value of a tensor holding exactly one element (any rank, floating or integer).
  virtual Result<double> ReadTensorScalar(size_t index) = 0;
  // A non-tensor numeric leaf (torch.save only: "epoch", "bias", ...).
  virtual std::optional<double> NumericLeaf(const std::string& key) const { return std::nullopt; }
};

// Detects the format of `path` by its content and opens it.
Result<std::unique_ptr<CheckpointFile>> OpenCheckpoint(const std::string& path);

Result<std::unique_ptr<CheckpointFile>> OpenNpzFile(const std::string& path);
Result<std::unique_ptr<CheckpointFile>> OpenSafetensorsFile(const std::string& path);
Result<std::unique_ptr<CheckpointFile>> OpenTorchFile(const std::string& path);

// ---- .npy headers (npz members; also used for scalar .npy reads) ------------

struct NpyHeader {
  // "f32", "int64", "object", "structured", ... or the descr (">f4"): NpyDType::name
  std::string dtype;
  SourceDType source_dtype = SourceDType::kOther;
  int64_t item_size = 0;  // bytes per element (0 when unknown)
  bool fortran_order = false;
  std::vector<int64_t> shape;
  uint64_t data_offset = 0;  // bytes from the start of the .npy to its data
};

// Parses the magic, version and header dict of a .npy from its first bytes
// `prefix` (with checkpoint/npy.h's ParseNpyHeaderPrefix). When `prefix` is too
// short to hold the whole header, returns OK with *needed set to the byte count
// required and *header untouched; else sets *needed = 0 and fills *header.
// Lenient: members of any dtype (object, structured, big-endian) are described,
// not refused. Corruption on a bad header; NotSupported for an unknown version.
Status ParseNpyHeader(std::string_view prefix, NpyHeader* header, size_t* needed);

}  // namespace embstore::storage::ckpt

#endif  // EMBSTORE_CHECKPOINT_CHECKPOINT_INTERNAL_H_
