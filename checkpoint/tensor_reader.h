// Internal: the interface import uses to stream a 2-D float tensor out of a
// checkpoint file, whatever its format, in row chunks with bounded memory.
#ifndef EMBSTORE_CHECKPOINT_TENSOR_READER_H_
#define EMBSTORE_CHECKPOINT_TENSOR_READER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "embstore/checkpoint.h"
#include "embstore/dtype.h"
#include "embstore/status.h"

namespace embstore::storage {

// Element types a checkpoint tensor may have. Only floating ones import.
enum class SourceDType { kF32, kF64, kF16, kBF16, kOther };

// The table dtype a tensor is stored as when none is asked for (import,
// publish): f16 and bf16 stay as they are, anything else becomes f32.
inline DType DefaultTableDType(SourceDType source) {
  switch (source) {
    case SourceDType::kF16:
      return DType::kF16;
    case SourceDType::kBF16:
      return DType::kBF16;
    default:
      return DType::kF32;
  }
}

// A tensor viewed as `rows` x `dim` (1-D tensors are N x 1).
class TensorReader {
 public:
  virtual ~TensorReader() = default;
  virtual int64_t rows() const = 0;
  virtual int64_t dim() const = 0;
  virtual SourceDType source_dtype() const = 0;
  // Human-readable origin, e.g. "model.pt:emb.weight".
  virtual std::string source() const = 0;
  // Reads rows [first, first + count) converted to float32 into out
  // (count * dim floats, row-major). Honors strides/order of the source.
  // Returns IOError / Corruption / InvalidArgument with a clear message on a
  // short or malformed file. REQUIRES: first + count <= rows().
  virtual Status ReadRows(int64_t first, int64_t count, float* out) = 0;
};

// Opens tensor `key` of the checkpoint at `path` (format detected by content).
// An empty key selects the only tensor of a single-tensor file; with several
// tensors and no key it fails with InvalidArgument listing the keys.
Result<std::unique_ptr<TensorReader>> OpenTensor(const std::string& path, const std::string& key);

// Format-specific entry points (each in its own .cc).
Result<std::vector<TensorEntry>> InspectNpy(const std::string& path);
Result<std::unique_ptr<TensorReader>> OpenNpy(const std::string& path);

}  // namespace embstore::storage

#endif  // EMBSTORE_CHECKPOINT_TENSOR_READER_H_
