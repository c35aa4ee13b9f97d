// Fuzzes the restricted pickle VM on raw data.pkl bytes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "checkpoint/pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  embstore::storage::pickle::Limits limits;
  // Smaller than the defaults so that one input stays fast; the checks are the same.
  limits.max_objects = 1 << 16;
  limits.max_memo = 1 << 16;
  limits.max_stack = 1 << 16;
  limits.max_leaves = 1 << 16;
  auto contents = embstore::storage::pickle::ParseTorchPickle(
      std::string_view(reinterpret_cast<const char*>(data), size), limits);
  if (contents.ok()) {
    for (const auto& leaf : contents->leaves) {
      if (leaf.kind == embstore::storage::pickle::Leaf::Kind::kTensor &&
          (leaf.tensor.storage >= contents->storages.size() ||
           leaf.tensor.size.size() != leaf.tensor.stride.size())) {
        __builtin_trap();  // invariants the torch reader relies on
      }
    }
  }
  return 0;
}
