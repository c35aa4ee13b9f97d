// Internal: NumPy .npy reading and writing (format versions 1.0, 2.0, 3.0).
#ifndef EMBSTORE_CHECKPOINT_NPY_H_
#define EMBSTORE_CHECKPOINT_NPY_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "embstore/status.h"
#include "util/io_util.h"

namespace embstore::storage {

// The six bytes every .npy file starts with.
inline constexpr uint8_t kNpyMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

// ---- The header grammar, shared by every .npy reader ---------------------------
//
// Two kinds of callers parse .npy headers: the strict readers below (query
// inputs, import of a plain .npy) refuse anything they cannot read, while the
// checkpoint readers (checkpoint/npz.cc) list every member, whatever its dtype, and
// refuse only when asked for its data. Both use ParseNpyHeaderPrefix.

// A decoded NumPy type string ("<f4", "|b1", ">i8", "|O", "<U5").
struct NpyDType {
  char kind = 0;            // numpy's kind letter ('f', 'i', 'u', 'b', 'c', 'S', 'U', 'V', 'O',
                            // 'M', 'm'); 0 when the type string is not one we understand
  int64_t item_size = 0;    // bytes per element; 0 for objects, structured and unknown sizes
  bool big_endian = false;  // '>' with item_size > 1: the bytes would need swapping
  // "f32", "f64", "f16", "int64", "uint8", "bool", "complex64", "object", "structured";
  // else the type string itself (">f4", "<M8[ns]"), in quotes when it lacks a byte-order
  // character, so that no malformed descr reads as one of the names above.
  std::string name;

  bool is_object() const { return kind == 'O'; }
};

// Decodes a type string. Never fails: what it does not understand keeps kind 0
// and item_size 0.
NpyDType DecodeNpyDescr(std::string_view descr);

// A syntactically valid header, before deciding whether its data can be read.
struct RawNpyHeader {
  int major_version = 0;    // 1, 2 or 3
  std::string descr;        // the type string; empty when `structured`
  bool structured = false;  // descr is a list of fields (a record array)
  NpyDType dtype;           // decoded descr (name "structured" when `structured`)
  bool fortran_order = false;
  std::vector<int64_t> shape;           // every dimension >= 0; empty for a scalar
  int64_t num_elements = 1;             // product of shape (fits int64)
  uint64_t data_offset = 0;             // bytes from the start of the .npy to its data
  std::vector<std::string> extra_keys;  // dict keys besides the three numpy writes
};

// Parses the magic, version, header length and header dict at the start of
// `prefix` (the first bytes of a .npy). Accepts what numpy writes: versions
// 1.0-3.0, either quote style, trailing commas, Python 2 longs ("3L"), padding.
// When `prefix` is too short to hold the whole header, returns an empty header
// with *needed set to the byte count to retry with (at most 12 + 1 MiB, as the
// header length is bounded); otherwise sets *needed = 0.
// Errors: InvalidArgument (bad magic, header length over 1 MiB, malformed dict,
// shape whose product overflows int64), NotSupported (unknown format version).
// Reads nothing past `prefix`; nesting and dimension counts are bounded.
Result<RawNpyHeader> ParseNpyHeaderPrefix(std::string_view prefix, size_t* needed);

// ---- Strict reading -------------------------------------------------------------

// A parsed .npy header whose data this library can read.
struct NpyHeader {
  std::string descr;  // e.g. "<f4"
  char kind = 0;      // 'f', 'i', 'u', 'b', ... (numpy's kind letter)
  int item_size = 0;  // bytes per element
  bool fortran_order = false;
  std::vector<int64_t> shape;     // as stored
  uint64_t data_offset = 0;       // bytes from the start of the file to the data
  uint64_t data_bytes = 0;        // product(shape) * item_size
  std::string DTypeName() const;  // NpyDType::name of descr: "f32", "int64", ... or the descr
};

// Parses the header at the start of `prefix` (the first bytes of a file; at
// least 10 bytes, and the whole header for success). `file_size` bounds the
// data. Errors name what is wrong (magic, version, length, dict syntax, dtype,
// shape, size): InvalidArgument, or NotSupported for big-endian data and unknown
// format versions. Structured, object and unknown dtypes are refused.
Result<NpyHeader> ParseNpyHeader(std::span<const uint8_t> prefix, uint64_t file_size);
// Reads and parses the header of the file at `path`.
Result<NpyHeader> ReadNpyHeader(const std::string& path);

// A whole small array loaded into memory (used for query inputs given as
// @file.npy). Refuses files over `max_bytes` of data.
struct NpyArray {
  NpyHeader header;
  PageBuffer data;  // row-major (C order), little-endian; 64-byte aligned
};
Result<NpyArray> LoadNpy(const std::string& path, uint64_t max_bytes = uint64_t{1} << 32);
// As LoadNpy, but a regular file of at least 1 MiB of data whose data start
// is 64-byte aligned (as numpy writes them) is mapped read-only instead of
// read (PageBuffer::MapReadOnly: no copy and no fresh memory to zero); other
// files are read.
Result<NpyArray> MapOrLoadNpy(const std::string& path, uint64_t max_bytes = uint64_t{1} << 32);

// Writes a .npy file atomically: to "<path>.tmp-<pid>", fsync, rename. On any
// error the destination is untouched and the temporary removed. A symbolic
// link is followed: the file it leads to is replaced, not the link. A
// character device or a pipe (/dev/null, /dev/stdout) is written straight
// through; a directory, another kind of file or a dangling link is refused.
// `descr` is "<f4" or "<f2"; `data` holds product(shape) elements of that type.
Status WriteNpy(const std::string& path, const std::string& descr,
                const std::vector<int64_t>& shape, std::span<const uint8_t> data);

// Streaming writer for large arrays: header first, then Append() chunks, then
// Commit() (fsync + rename). Destroying an uncommitted writer removes the
// temporary file.
class NpyWriter {
 public:
  NpyWriter() = default;
  ~NpyWriter();
  NpyWriter(const NpyWriter&) = delete;
  NpyWriter& operator=(const NpyWriter&) = delete;
  Status Open(const std::string& path, const std::string& descr, const std::vector<int64_t>& shape);
  Status Append(std::span<const uint8_t> bytes);
  Status Commit();
  // The temporary file being written (empty for a device or a pipe).
  const std::string& tmp_path() const { return tmp_path_; }

 private:
  std::string path_;
  std::string tmp_path_;  // empty when writing straight into a device or pipe
  int fd_ = -1;
  uint64_t expected_bytes_ = 0;
  uint64_t written_bytes_ = 0;
};

}  // namespace embstore::storage

#endif  // EMBSTORE_CHECKPOINT_NPY_H_
