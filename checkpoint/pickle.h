// Internal: a restricted, data-only reader for the pickles inside torch.save
// checkpoints (the `data.pkl` member).
//
// This is not a Python unpickler: it interprets only the opcodes that plain
// containers, numbers, strings and tensors need, resolves globals against a
// short allowlist (tensor rebuild functions, storage types, OrderedDict, numpy
// scalars such as a saved np.float64 metric), and executes nothing. Any other global fails with
// InvalidArgument naming it. Every count, length and nesting level is bounded by Limits and by the
// input size, so hostile bytes yield an error, never a crash or a huge allocation.
//
// Thread-safety: free function; no shared state.
#ifndef EMBSTORE_CHECKPOINT_PICKLE_H_
#define EMBSTORE_CHECKPOINT_PICKLE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "embstore/status.h"

namespace embstore::storage::pickle {

struct Limits {
  size_t max_objects = size_t{1} << 22;  // containers, strings, tensors created
  size_t max_memo = size_t{1} << 22;     // memo entries
  size_t max_stack = size_t{1} << 22;    // values on the stack (all marks together)
  size_t max_marks = size_t{1} << 16;    // open MARKs
  int max_depth = 100;                   // container nesting seen while flattening
  size_t max_leaves =
      size_t{1} << 22;           // values visited while flattening (shared references count again)
  size_t max_key_length = 4096;  // bytes in one dotted key
  size_t max_key_bytes = size_t{64} << 20;  // bytes in all leaf keys together
};

// A storage referenced through a persistent id ('storage', torch.XStorage, key, location, numel).
struct StorageRef {
  std::string key;        // member name under <prefix>/data/
  std::string type_name;  // "torch.FloatStorage"
  std::string dtype;      // "f32", "f64", "f16", "bf16", "int64", ... ("uint8" for UntypedStorage)
  int64_t element_size = 0;
  std::string location;  // "cpu", "cuda:0", ...
  int64_t numel = 0;
};

// torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, ...).
struct TensorRef {
  size_t storage = 0;  // index into Contents::storages
  int64_t storage_offset = 0;
  std::vector<int64_t> size;
  std::vector<int64_t> stride;  // same rank as size, in elements
};

struct Leaf {
  enum class Kind { kTensor, kNumber };
  std::string key;  // dotted path: "model.emb.weight", "layers.0.bias"; "" for a bare root value
  Kind kind = Kind::kTensor;
  TensorRef tensor;   // kTensor
  double number = 0;  // kNumber: ints, floats and bools
};

// What a torch.save pickle holds: its storages and its tensor and number
// leaves (strings, None and bytes are dropped), in pickle order.
struct Contents {
  std::vector<StorageRef> storages;
  std::vector<Leaf> leaves;
};

// Interprets `data` (a whole data.pkl). InvalidArgument for disallowed globals
// or opcodes, Corruption for truncated/malformed bytes, NotSupported for
// pickle protocols above 5.
Result<Contents> ParseTorchPickle(std::string_view data, const Limits& limits = Limits());

}  // namespace embstore::storage::pickle

#endif  // EMBSTORE_CHECKPOINT_PICKLE_H_
