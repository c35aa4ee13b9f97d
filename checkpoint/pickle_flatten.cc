// Flattening: the walk from a pickle's root value to its tensor and number
// leaves, named by dotted paths ("model.emb.weight", "layers.0.bias"), with
// bounds on depth, visits and key bytes so shared references cannot blow up.
#include <string>

#include "checkpoint/pickle_internal.h"

namespace embstore::storage::pickle::internal {

Status Machine::Flatten(const Value& v, std::string* key, int depth, Contents* out) {
  if (++visits_ > limits_.max_leaves) {
    return Status::InvalidArgument("data.pkl expands to more than " +
                                   std::to_string(limits_.max_leaves) +
                                   " values; refusing to load it");
  }
  if (key->size() > limits_.max_key_length) {
    return Status::InvalidArgument("data.pkl has a key longer than " +
                                   std::to_string(limits_.max_key_length) +
                                   " bytes; refusing to load it");
  }
  if (v.kind == Kind::kTensor || v.kind == Kind::kInt || v.kind == Kind::kBool ||
      v.kind == Kind::kFloat) {
    key_bytes_ += key->size();
    if (key_bytes_ > limits_.max_key_bytes) {
      return Status::InvalidArgument("data.pkl keys add up to more than " +
                                     std::to_string(limits_.max_key_bytes) +
                                     " bytes; refusing to load it");
    }
  }
  switch (v.kind) {
    case Kind::kTensor: {
      Leaf leaf;
      leaf.key = *key;
      leaf.kind = Leaf::Kind::kTensor;
      leaf.tensor = tensors_[static_cast<size_t>(v.i)];
      out->leaves.push_back(std::move(leaf));
      return Status::OK();
    }
    case Kind::kInt:
    case Kind::kBool:
    case Kind::kFloat: {
      Leaf leaf;
      leaf.key = *key;
      leaf.kind = Leaf::Kind::kNumber;
      leaf.number = v.kind == Kind::kFloat ? v.f : static_cast<double>(v.i);
      out->leaves.push_back(std::move(leaf));
      return Status::OK();
    }
    case Kind::kDict:
    case Kind::kList:
    case Kind::kTuple:
      break;
    default:
      return Status::OK();  // strings, None, bytes, bare storages: not importable
  }
  if (depth >= limits_.max_depth) {
    return Status::InvalidArgument("data.pkl nests containers more than " +
                                   std::to_string(limits_.max_depth) +
                                   " levels deep; refusing to load it");
  }
  if (!on_path_.insert(v.obj).second) return Status::OK();  // a reference cycle: nothing new below
  const size_t base = key->size();
  const auto& items = v.obj->items;
  const bool is_dict = v.kind == Kind::kDict;
  const size_t n = is_dict ? items.size() / 2 : items.size();
  std::string component;
  Status status;
  for (size_t i = 0; i < n && status.ok(); ++i) {
    if (is_dict) {
      if (!KeyString(items[2 * i], KeyUse::kPath, &component)) continue;
    } else {
      component = std::to_string(i);
    }
    if (base > 0) key->push_back('.');
    key->append(component);
    status = Flatten(is_dict ? items[2 * i + 1] : items[i], key, depth + 1, out);
    key->resize(base);
  }
  on_path_.erase(v.obj);
  return status;
}
}  // namespace embstore::storage::pickle::internal
