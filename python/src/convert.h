// The Python module's conversions: Python inputs (numpy arrays, torch CPU
// tensors, lists, buffer-protocol objects) to the engine's typed views, and
// library Status errors to Python exceptions.
//
// Inputs are never copied when they are already what the engine reads (a
// C-contiguous, native-order int32/int64 id array; a float32 weight array);
// anything else (another integer type, float64 weights, a strided view, a
// list) is converted once into a new array, which the returned object owns.
// Every function here needs the GIL.
#ifndef EMBSTORE_PYTHON_CONVERT_H_
#define EMBSTORE_PYTHON_CONVERT_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "embstore/query.h"
#include "embstore/status.h"

namespace embstore::python {

namespace py = pybind11;

// The Python exception for a library error, carrying its message:
// InvalidArgument -> ValueError (IndexError for an id out of range),
// NotFound -> KeyError (FileNotFoundError where `missing_is_file`),
// AlreadyExists / NotSupported -> ValueError, IOError -> OSError,
// Corruption -> embstore.CorruptionError, Internal -> RuntimeError.
[[noreturn]] void Raise(const Status& status, bool missing_is_file = false);
inline void Check(const Status& status, bool missing_is_file = false) {
  if (!status.ok()) Raise(status, missing_is_file);
}
[[noreturn]] void RaiseValueError(const std::string& message);

// Registers embstore.CorruptionError (a subclass of OSError) in `m`.
void RegisterExceptions(py::module_& m);

// Ids or offsets as the engine reads them; `array` keeps the memory alive.
struct IdArray {
  py::array array;
  IndexArray view;
  std::vector<int64_t> shape;
};
// `what` names the argument in messages ("input", "offsets", ...).
IdArray ToIds(py::handle obj, const char* what);

// float32 weights; float64 (and float16) are converted.
struct WeightArray {
  py::array array;
  std::span<const float> values;
  std::vector<int64_t> shape;
};
WeightArray ToWeights(py::handle obj, const char* what);
// per_sample_weights: absent (None) or of the ids' shape (torch's rule).
std::optional<WeightArray> OptionalWeights(py::handle obj, const std::vector<int64_t>& ids_shape);

// A batched-bag layout: input [B, N] and bag_ends [B, K], checked.
struct BatchedIds {
  IdArray ids, ends;
  int64_t batch() const { return ids.shape[0]; }
  int64_t items() const { return ids.shape[1]; }
  int64_t bags_per_sample() const { return ends.shape[1]; }
};
BatchedIds ToBatchedIds(py::handle input, py::handle bag_ends);

// The output: `out` when given (float32, C-contiguous, writable, exactly
// `shape`; otherwise ValueError), else a new float32 array of `shape`.
py::array_t<float> OutputArray(py::handle out, const std::vector<int64_t>& shape);
std::span<float> Values(py::array_t<float>& a);

// Refuses an `out` whose memory overlaps any of `inputs` (null entries are
// skipped): pooling would overwrite ids it has yet to read.
void CheckNoOverlap(const py::array& out, const std::vector<const py::array*>& inputs);

// Pooling options from torch's argument names.
QueryOptions ToQueryOptions(const std::string& mode, py::handle max_norm, double norm_type,
                            py::handle padding_idx, bool include_last_offset);

}  // namespace embstore::python

#endif  // EMBSTORE_PYTHON_CONVERT_H_
