// Internal to the torch pickle reader (checkpoint/pickle.h): the values the
// machine builds and the machine itself. Its parts live in three files:
//   pickle.cc          the opcode interpreter, its stack, memo and limits;
//   pickle_torch.cc    the allowlisted globals: calls, NEWOBJ, persistent ids;
//   pickle_flatten.cc  the walk from the root value to dotted-key leaves.
#ifndef EMBSTORE_CHECKPOINT_PICKLE_INTERNAL_H_
#define EMBSTORE_CHECKPOINT_PICKLE_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "checkpoint/pickle.h"
#include "embstore/status.h"

namespace embstore::storage::pickle::internal {

enum class Kind : uint8_t {
  kNone,
  kBool,
  kInt,
  kBigInt,  // wider than 64 bits: kept only as an opaque leaf
  kFloat,
  kString,
  kBytes,
  kList,
  kTuple,
  kDict,
  kGlobal,      // i: index into the allowlist (pickle_torch.cc)
  kStorage,     // i: index into storages
  kTensor,      // i: index into tensors
  kNumpyDType,  // obj->text: byte order then type code, e.g. "<f8"
};

struct Obj;

struct Value {
  Kind kind = Kind::kNone;
  int64_t i = 0;
  double f = 0;
  Obj* obj = nullptr;  // strings, bytes, lists, tuples, dicts
};

struct Obj {
  std::string text;          // kString, kBytes
  std::vector<Value> items;  // kList, kTuple; kDict: key, value, key, value, ...
  std::unordered_map<std::string, size_t> index;  // kDict: canonical key -> position in items
};

// "int", "dict", ...: the Python type name of a value of kind k, for messages.
const char* KindName(Kind k);

// How a dict key reads as a string.
enum class KeyUse {
  kCanonical,  // Python-equal keys get equal strings (True == 1), so SETITEM replaces like a dict
  kPath,       // the component the key contributes to a flattened name ("True", "None", "3")
};
// False when the key has no string of that use (floats, tuples, ...; bytes for kPath).
bool KeyString(const Value& k, KeyUse use, std::string* out);

// Interprets one data.pkl. Single use: construct, then Run() once.
class Machine {
 public:
  Machine(std::string_view data, const Limits& limits) : d_(data), limits_(limits) {}

  // Executes up to STOP, then flattens the root value into leaves.
  Result<Contents> Run();

 private:
  // ---- errors (pickle.cc)
  Status Truncated() const;
  Status Malformed(const std::string& what) const;
  // The error for a global that is not on the allowlist.
  static Status Refused(const std::string& global);

  // ---- input (pickle.cc)
  Status Need(uint64_t n) const;
  uint64_t ReadUInt(int bytes);  // REQUIRES: Need(bytes)
  Status ReadLine(std::string* out);

  // ---- allocation, bounded by limits_ (pickle.cc)
  Status NewObj(Kind kind, Value* v);
  Status CountCells(size_t n);

  // ---- stack (pickle.cc)
  size_t Floor() const;
  Status Push(Value v);
  Status Pop(Value* v);
  Status Top(Value** v);
  Status PopMark(std::vector<Value>* items);

  // ---- containers (pickle.cc)
  Status MakeSequence(Kind kind, std::vector<Value> items, Value* out);
  Status SetItem(Value& dict, const Value& k, const Value& v);
  Status Append(Value& list, const Value& v);

  // ---- opcodes (pickle.cc)
  Status Memoize(uint64_t index);
  Status String(Kind kind, uint64_t len);
  Status Long(uint64_t n);
  Status Execute(Value* result);

  // ---- globals (pickle_torch.cc)
  // GLOBAL / STACK_GLOBAL: a kGlobal value, or Refused when not allowlisted.
  Status ResolveGlobal(const std::string& module, const std::string& name, Value* out);
  // REDUCE: callable(*args) for the allowlisted callables.
  Status Call(const Value& callable, const Value& args, Value* out, int depth = 0);
  // NEWOBJ: cls.__new__(cls, *args), for OrderedDict only.
  Status NewObject(const Value& cls, Value* out);
  // BINPERSID: a ('storage', type, key, location, numel) persistent id.
  Status PersistentLoad(const Value& pid, Value* out);

  // ---- flattening (pickle_flatten.cc)
  // Appends the tensor and number leaves under v, keyed by *key plus their path.
  Status Flatten(const Value& v, std::string* key, int depth, Contents* out);

  std::string_view d_;
  const Limits& limits_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  std::deque<Obj> objs_;
  size_t cells_ = 0;
  std::vector<StorageRef> storages_;
  std::vector<TensorRef> tensors_;
  size_t visits_ = 0;
  size_t key_bytes_ = 0;
  std::unordered_set<const Obj*> on_path_;
};

}  // namespace embstore::storage::pickle::internal

#endif  // EMBSTORE_CHECKPOINT_PICKLE_INTERNAL_H_
