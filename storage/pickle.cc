#include "storage/pickle.h"

#include <cstdio>
#include <cstring>
#include <deque>
#include <unordered_map>
#include <unordered_set>

#include "storage/half.h"

namespace embstore::storage::pickle {
namespace {

// ---- allowlisted globals ---------------------------------------------------------

enum class GlobalKind {
  kOrderedDict,
  kRebuildTensorV2,
  kRebuildTensor,
  kRebuildParameter,
  kRebuildParameterWithState,
  kRebuildFromTypeV2,
  kTorchSize,
  kCodecsEncode,
  kNumpyScalar,  // numpy.core.multiarray.scalar(dtype, bytes): np.float64(0.5) and friends
  kNumpyDType,   // numpy.dtype('f8', False, True), then BUILD with the byte order
  kTensorType,   // only as an argument of _rebuild_from_type_v2
  kStorageType,  // only inside a persistent id
};

struct GlobalDef {
  const char* name;
  GlobalKind kind;
  const char* dtype = "";  // kStorageType
  int64_t element_size = 0;
};

constexpr GlobalDef kGlobals[] = {
    {"collections.OrderedDict", GlobalKind::kOrderedDict},
    {"torch._utils._rebuild_tensor_v2", GlobalKind::kRebuildTensorV2},
    {"torch._utils._rebuild_tensor", GlobalKind::kRebuildTensor},
    {"torch._utils._rebuild_parameter", GlobalKind::kRebuildParameter},
    {"torch._utils._rebuild_parameter_with_state", GlobalKind::kRebuildParameterWithState},
    {"torch._tensor._rebuild_from_type_v2", GlobalKind::kRebuildFromTypeV2},
    {"torch.Size", GlobalKind::kTorchSize},
    {"_codecs.encode", GlobalKind::kCodecsEncode},
    {"numpy.core.multiarray.scalar", GlobalKind::kNumpyScalar},
    {"numpy._core.multiarray.scalar", GlobalKind::kNumpyScalar},
    {"numpy.dtype", GlobalKind::kNumpyDType},
    {"torch.Tensor", GlobalKind::kTensorType},
    {"torch._tensor.Tensor", GlobalKind::kTensorType},
    {"torch.nn.parameter.Parameter", GlobalKind::kTensorType},
    {"torch.FloatStorage", GlobalKind::kStorageType, "f32", 4},
    {"torch.DoubleStorage", GlobalKind::kStorageType, "f64", 8},
    {"torch.HalfStorage", GlobalKind::kStorageType, "f16", 2},
    {"torch.BFloat16Storage", GlobalKind::kStorageType, "bf16", 2},
    {"torch.LongStorage", GlobalKind::kStorageType, "int64", 8},
    {"torch.IntStorage", GlobalKind::kStorageType, "int32", 4},
    {"torch.ShortStorage", GlobalKind::kStorageType, "int16", 2},
    {"torch.CharStorage", GlobalKind::kStorageType, "int8", 1},
    {"torch.ByteStorage", GlobalKind::kStorageType, "uint8", 1},
    {"torch.BoolStorage", GlobalKind::kStorageType, "bool", 1},
    {"torch.ComplexFloatStorage", GlobalKind::kStorageType, "complex64", 8},
    {"torch.ComplexDoubleStorage", GlobalKind::kStorageType, "complex128", 16},
    {"torch.QInt8Storage", GlobalKind::kStorageType, "qint8", 1},
    {"torch.QUInt8Storage", GlobalKind::kStorageType, "quint8", 1},
    {"torch.QInt32Storage", GlobalKind::kStorageType, "qint32", 4},
    {"torch.ComplexHalfStorage", GlobalKind::kStorageType, "complex32", 4},
    {"torch.QUInt4x2Storage", GlobalKind::kStorageType, "quint4x2", 1},
    {"torch.QUInt2x4Storage", GlobalKind::kStorageType, "quint2x4", 1},
    {"torch.UInt16Storage", GlobalKind::kStorageType, "uint16", 2},
    {"torch.UInt32Storage", GlobalKind::kStorageType, "uint32", 4},
    {"torch.UInt64Storage", GlobalKind::kStorageType, "uint64", 8},
    {"torch.Float8_e4m3fnStorage", GlobalKind::kStorageType, "f8_e4m3fn", 1},
    {"torch.Float8_e5m2Storage", GlobalKind::kStorageType, "f8_e5m2", 1},
    {"torch.Float8_e4m3fnuzStorage", GlobalKind::kStorageType, "f8_e4m3fnuz", 1},
    {"torch.Float8_e5m2fnuzStorage", GlobalKind::kStorageType, "f8_e5m2fnuz", 1},
    {"torch.UntypedStorage", GlobalKind::kStorageType, "uint8", 1},
    {"torch.storage.UntypedStorage", GlobalKind::kStorageType, "uint8", 1},
};

// ---- values -----------------------------------------------------------------------

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
  kGlobal,      // i: index into kGlobals
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

const char* KindName(Kind k) {
  switch (k) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
    case Kind::kBigInt:
      return "int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kBytes:
      return "bytes";
    case Kind::kList:
      return "list";
    case Kind::kTuple:
      return "tuple";
    case Kind::kDict:
      return "dict";
    case Kind::kGlobal:
      return "global";
    case Kind::kStorage:
      return "storage";
    case Kind::kTensor:
      return "tensor";
    case Kind::kNumpyDType:
      return "numpy.dtype";
  }
  return "?";
}

// Python-equal keys get equal strings (True == 1), so SETITEM replaces like a dict.
bool CanonicalKey(const Value& k, std::string* out) {
  switch (k.kind) {
    case Kind::kString:
      *out = "s" + k.obj->text;
      return true;
    case Kind::kBytes:
      *out = "b" + k.obj->text;
      return true;
    case Kind::kInt:
    case Kind::kBool:
      *out = "i" + std::to_string(k.i);
      return true;
    case Kind::kNone:
      *out = "n";
      return true;
    default:
      return false;
  }
}

// The path component a dict key contributes to a flattened name.
bool KeyComponent(const Value& k, std::string* out) {
  switch (k.kind) {
    case Kind::kString:
      *out = k.obj->text;
      return true;
    case Kind::kInt:
      *out = std::to_string(k.i);
      return true;
    case Kind::kBool:
      *out = k.i ? "True" : "False";
      return true;
    case Kind::kNone:
      *out = "None";
      return true;
    default:
      return false;
  }
}

// ---- the machine ------------------------------------------------------------------

class Machine {
 public:
  Machine(std::string_view data, const Limits& limits) : d_(data), limits_(limits) {}

  Result<Contents> Run() {
    Value root;
    EMBSTORE_RETURN_IF_ERROR(Execute(&root));
    Contents contents;
    std::string key;
    EMBSTORE_RETURN_IF_ERROR(Flatten(root, &key, 0, &contents));
    contents.storages = std::move(storages_);
    return contents;
  }

 private:
  // ---- errors
  Status Truncated() const {
    return Status::Corruption(
        "data.pkl is truncated or malformed (needed bytes past its end at byte " +
        std::to_string(pos_) + ")");
  }
  Status Malformed(const std::string& what) const {
    return Status::Corruption("data.pkl is malformed: " + what + " (at byte " +
                              std::to_string(op_pos_) + ")");
  }
  static Status Refused(const std::string& global) {
    return Status::InvalidArgument(
        "checkpoint refers to '" + global +
        "', which embstore does not load (only tensors and plain containers "
        "are accepted)");
  }

  // ---- input
  Status Need(uint64_t n) const { return n <= d_.size() - pos_ ? Status::OK() : Truncated(); }
  uint64_t ReadUInt(int bytes) {  // REQUIRES: Need(bytes)
    uint64_t v = 0;
    for (int b = bytes - 1; b >= 0; --b) v = (v << 8) | static_cast<uint8_t>(d_[pos_ + b]);
    pos_ += bytes;
    return v;
  }
  Status ReadLine(std::string* out) {
    const size_t nl = d_.find('\n', pos_);
    if (nl == std::string_view::npos) return Truncated();
    if (nl - pos_ > 256) return Malformed("global name too long");
    out->assign(d_.substr(pos_, nl - pos_));
    pos_ = nl + 1;
    return Status::OK();
  }

  // ---- allocation
  Status NewObj(Kind kind, Value* v) {
    if (objs_.size() >= limits_.max_objects) {
      return Status::InvalidArgument("data.pkl holds more than " +
                                     std::to_string(limits_.max_objects) +
                                     " objects; refusing to load it");
    }
    objs_.emplace_back();
    v->kind = kind;
    v->obj = &objs_.back();
    return Status::OK();
  }
  Status CountCells(size_t n) {
    cells_ += n;
    if (cells_ > limits_.max_objects * 4) {
      return Status::InvalidArgument(
          "data.pkl holds too many container items; refusing to load it");
    }
    return Status::OK();
  }

  // ---- stack
  size_t Floor() const { return marks_.empty() ? 0 : marks_.back(); }
  Status Push(Value v) {
    if (stack_.size() >= limits_.max_stack) return Malformed("stack too deep");
    stack_.push_back(v);
    return Status::OK();
  }
  Status Pop(Value* v) {
    if (stack_.size() <= Floor()) return Malformed("stack underflow");
    *v = stack_.back();
    stack_.pop_back();
    return Status::OK();
  }
  Status Top(Value** v) {
    if (stack_.size() <= Floor()) return Malformed("stack underflow");
    *v = &stack_.back();
    return Status::OK();
  }
  Status PopMark(std::vector<Value>* items) {
    if (marks_.empty()) return Malformed("no MARK on the stack");
    const size_t m = marks_.back();
    marks_.pop_back();
    items->assign(stack_.begin() + static_cast<ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return Status::OK();
  }

  // ---- containers
  Status MakeSequence(Kind kind, std::vector<Value> items, Value* out) {
    EMBSTORE_RETURN_IF_ERROR(NewObj(kind, out));
    EMBSTORE_RETURN_IF_ERROR(CountCells(items.size()));
    out->obj->items = std::move(items);
    return Status::OK();
  }
  Status SetItem(Value& dict, const Value& k, const Value& v) {
    if (dict.kind != Kind::kDict)
      return Malformed(std::string("SETITEM on a ") + KindName(dict.kind));
    Obj* d = dict.obj;
    std::string canon;
    if (CanonicalKey(k, &canon)) {
      auto [it, inserted] = d->index.emplace(std::move(canon), d->items.size());
      if (!inserted) {
        d->items[it->second + 1] = v;
        return Status::OK();
      }
    }
    EMBSTORE_RETURN_IF_ERROR(CountCells(2));
    d->items.push_back(k);
    d->items.push_back(v);
    return Status::OK();
  }
  Status Append(Value& list, const Value& v) {
    if (list.kind != Kind::kList)
      return Malformed(std::string("APPEND to a ") + KindName(list.kind));
    EMBSTORE_RETURN_IF_ERROR(CountCells(1));
    list.obj->items.push_back(v);
    return Status::OK();
  }

  // ---- globals and calls
  Status ResolveGlobal(const std::string& module, const std::string& name, Value* out) {
    const std::string full = module + "." + name;
    for (size_t g = 0; g < std::size(kGlobals); ++g) {
      if (full == kGlobals[g].name) {
        out->kind = Kind::kGlobal;
        out->i = static_cast<int64_t>(g);
        return Status::OK();
      }
    }
    return Refused(full);
  }

  static Status IntList(const Value& v, std::vector<int64_t>* out) {
    if (v.kind != Kind::kTuple && v.kind != Kind::kList)
      return Status::Corruption("not a sequence");
    out->clear();
    for (const Value& x : v.obj->items) {
      if (x.kind != Kind::kInt || x.i < 0) return Status::Corruption("not a non-negative integer");
      out->push_back(x.i);
    }
    return Status::OK();
  }

  // The number a numpy scalar holds, or None for types that are not plain numbers.
  static Value NumpyScalar(const std::string& dtype, const std::string& raw) {
    Value v;
    if (dtype.size() < 3 || dtype[0] == '>') return v;  // big-endian: not decoded
    const std::string code = dtype.substr(1);
    auto le = [&](size_t n) {
      uint64_t u = 0;
      for (size_t b = n; b-- > 0;) u = (u << 8) | static_cast<uint8_t>(raw[b]);
      return u;
    };
    const char kind = code[0];
    const size_t n = code.size() == 2 && code[1] >= '1' && code[1] <= '8'
                         ? static_cast<size_t>(code[1] - '0')
                         : 0;
    if (n == 0 || raw.size() != n) return v;
    if (kind == 'f' && (n == 2 || n == 4 || n == 8)) {
      v.kind = Kind::kFloat;
      if (n == 8) {
        const uint64_t u = le(8);
        std::memcpy(&v.f, &u, 8);
      } else if (n == 4) {
        const uint32_t u = static_cast<uint32_t>(le(4));
        float f;
        std::memcpy(&f, &u, 4);
        v.f = f;
      } else {
        v.f = storage::HalfToFloat(static_cast<uint16_t>(le(2)));
      }
    } else if ((kind == 'i' || kind == 'u') && (n == 1 || n == 2 || n == 4 || n == 8)) {
      uint64_t u = le(n);
      if (kind == 'i' && n < 8 && (u >> (8 * n - 1)) & 1) u |= ~uint64_t{0} << (8 * n);
      if (kind == 'u' && n == 8 && u > static_cast<uint64_t>(INT64_MAX)) {
        v.kind = Kind::kFloat;
        v.f = static_cast<double>(u);
      } else {
        v.kind = Kind::kInt;
        v.i = static_cast<int64_t>(u);
      }
    } else if (kind == 'b' && n == 1) {
      v.kind = Kind::kBool;
      v.i = raw[0] != 0;
    }
    return v;
  }

  Status Call(const Value& callable, const Value& args, Value* out, int depth = 0) {
    if (callable.kind != Kind::kGlobal)
      return Malformed(std::string("call of a ") + KindName(callable.kind));
    if (args.kind != Kind::kTuple) return Malformed("call arguments are not a tuple");
    const GlobalDef& g = kGlobals[callable.i];
    const std::vector<Value>& a = args.obj->items;
    switch (g.kind) {
      case GlobalKind::kOrderedDict: {
        EMBSTORE_RETURN_IF_ERROR(NewObj(Kind::kDict, out));
        if (a.empty()) return Status::OK();
        if (a.size() != 1) return Malformed("OrderedDict() with several arguments");
        if (a[0].kind == Kind::kDict) {
          const auto& src = a[0].obj->items;
          for (size_t i = 0; i + 1 < src.size(); i += 2)
            EMBSTORE_RETURN_IF_ERROR(SetItem(*out, src[i], src[i + 1]));
          return Status::OK();
        }
        if (a[0].kind != Kind::kList && a[0].kind != Kind::kTuple)
          return Malformed("OrderedDict() argument");
        for (const Value& pair : a[0].obj->items) {
          if ((pair.kind != Kind::kTuple && pair.kind != Kind::kList) ||
              pair.obj->items.size() != 2) {
            return Malformed("OrderedDict() item is not a pair");
          }
          EMBSTORE_RETURN_IF_ERROR(SetItem(*out, pair.obj->items[0], pair.obj->items[1]));
        }
        return Status::OK();
      }
      case GlobalKind::kRebuildTensorV2:
      case GlobalKind::kRebuildTensor: {
        if (a.size() < 4)
          return Malformed("_rebuild_tensor needs storage, offset, size and stride");
        if (a[0].kind != Kind::kStorage) return Malformed("_rebuild_tensor without a storage");
        if (a[1].kind != Kind::kInt || a[1].i < 0) return Malformed("bad tensor storage offset");
        TensorRef t;
        t.storage = static_cast<size_t>(a[0].i);
        t.storage_offset = a[1].i;
        if (!IntList(a[2], &t.size).ok()) return Malformed("bad tensor size");
        if (!IntList(a[3], &t.stride).ok()) return Malformed("bad tensor stride");
        if (t.size.size() != t.stride.size())
          return Malformed("tensor size and stride differ in rank");
        if (t.size.size() > 64) return Malformed("tensor rank above 64");
        EMBSTORE_RETURN_IF_ERROR(CountCells(1 + t.size.size()));
        tensors_.push_back(std::move(t));
        out->kind = Kind::kTensor;
        out->i = static_cast<int64_t>(tensors_.size() - 1);
        return Status::OK();
      }
      case GlobalKind::kRebuildParameter:
      case GlobalKind::kRebuildParameterWithState:
        if (a.empty() || a[0].kind != Kind::kTensor)
          return Malformed("_rebuild_parameter without a tensor");
        *out = a[0];
        return Status::OK();
      case GlobalKind::kRebuildFromTypeV2: {
        // (func, type, args, state): a tensor subclass rebuilt by func(*args).
        if (a.size() < 3 || depth > 0) return Malformed("bad _rebuild_from_type_v2 call");
        if (a[1].kind != Kind::kGlobal || kGlobals[a[1].i].kind != GlobalKind::kTensorType) {
          return Malformed("_rebuild_from_type_v2 of an unsupported type");
        }
        EMBSTORE_RETURN_IF_ERROR(Call(a[0], a[2], out, depth + 1));
        if (out->kind != Kind::kTensor)
          return Malformed("_rebuild_from_type_v2 did not build a tensor");
        return Status::OK();
      }
      case GlobalKind::kTorchSize: {
        if (a.size() != 1 || (a[0].kind != Kind::kTuple && a[0].kind != Kind::kList)) {
          return Malformed("bad torch.Size() call");
        }
        return MakeSequence(Kind::kTuple, a[0].obj->items, out);
      }
      case GlobalKind::kCodecsEncode: {
        // Protocol 2 spells bytes as _codecs.encode(text, 'latin1'): the UTF-8 text
        // of code points below 256, one per byte.
        if (a.size() != 2 || a[0].kind != Kind::kString || a[1].kind != Kind::kString ||
            (a[1].obj->text != "latin1" && a[1].obj->text != "latin-1")) {
          return Malformed("bad _codecs.encode() call");
        }
        EMBSTORE_RETURN_IF_ERROR(NewObj(Kind::kBytes, out));
        const std::string& t = a[0].obj->text;
        for (size_t i = 0; i < t.size(); ++i) {
          const uint8_t c = static_cast<uint8_t>(t[i]);
          if (c < 0x80) {
            out->obj->text += static_cast<char>(c);
          } else if ((c == 0xc2 || c == 0xc3) && i + 1 < t.size() &&
                     (static_cast<uint8_t>(t[i + 1]) & 0xc0) == 0x80) {
            out->obj->text +=
                static_cast<char>(((c & 0x03) << 6) | (static_cast<uint8_t>(t[++i]) & 0x3f));
          } else {
            return Malformed("_codecs.encode() of text that is not latin-1");
          }
        }
        return Status::OK();
      }
      case GlobalKind::kNumpyDType: {
        if (a.empty() || a[0].kind != Kind::kString || a[0].obj->text.size() > 16) {
          return Malformed("bad numpy.dtype() call");
        }
        EMBSTORE_RETURN_IF_ERROR(NewObj(Kind::kNumpyDType, out));
        out->obj->text = "|" + a[0].obj->text;
        return Status::OK();
      }
      case GlobalKind::kNumpyScalar:
        if (a.size() != 2 || a[0].kind != Kind::kNumpyDType || a[1].kind != Kind::kBytes) {
          return Malformed("bad numpy scalar");
        }
        *out = NumpyScalar(a[0].obj->text, a[1].obj->text);
        return Status::OK();
      case GlobalKind::kTensorType:
      case GlobalKind::kStorageType:
        break;
    }
    return Status::InvalidArgument(
        std::string("checkpoint calls '") + g.name +
        "', which embstore does not load (only tensors and plain containers are "
        "accepted)");
  }

  Status PersistentLoad(const Value& pid, Value* out) {
    if (pid.kind != Kind::kTuple || pid.obj->items.size() != 5)
      return Malformed("unsupported persistent id");
    const auto& p = pid.obj->items;
    if (p[0].kind != Kind::kString || p[0].obj->text != "storage")
      return Malformed("unsupported persistent id");
    if (p[1].kind != Kind::kGlobal || kGlobals[p[1].i].kind != GlobalKind::kStorageType) {
      return Malformed("persistent id without a storage type");
    }
    StorageRef s;
    if (p[2].kind == Kind::kString) {
      s.key = p[2].obj->text;
    } else if (p[2].kind == Kind::kInt) {
      s.key = std::to_string(p[2].i);
    } else {
      return Malformed("bad storage key");
    }
    if (p[3].kind == Kind::kString) s.location = p[3].obj->text;
    if (p[4].kind != Kind::kInt || p[4].i < 0) return Malformed("bad storage size");
    const GlobalDef& g = kGlobals[p[1].i];
    s.type_name = g.name;
    s.dtype = g.dtype;
    s.element_size = g.element_size;
    s.numel = p[4].i;
    EMBSTORE_RETURN_IF_ERROR(CountCells(4));
    storages_.push_back(std::move(s));
    out->kind = Kind::kStorage;
    out->i = static_cast<int64_t>(storages_.size() - 1);
    return Status::OK();
  }

  Status Memoize(uint64_t index) {
    Value* top = nullptr;
    EMBSTORE_RETURN_IF_ERROR(Top(&top));
    if (memo_.size() >= limits_.max_memo && memo_.find(index) == memo_.end()) {
      return Status::InvalidArgument("data.pkl memoizes more than " +
                                     std::to_string(limits_.max_memo) +
                                     " objects; refusing to load it");
    }
    memo_[index] = *top;
    return Status::OK();
  }

  Status String(Kind kind, uint64_t len) {
    EMBSTORE_RETURN_IF_ERROR(Need(len));
    Value v;
    EMBSTORE_RETURN_IF_ERROR(NewObj(kind, &v));
    v.obj->text.assign(d_.substr(pos_, static_cast<size_t>(len)));
    pos_ += static_cast<size_t>(len);
    return Push(v);
  }

  Status Long(uint64_t n) {
    EMBSTORE_RETURN_IF_ERROR(Need(n));
    Value v;
    if (n > 8) {
      v.kind = Kind::kBigInt;
      pos_ += static_cast<size_t>(n);
      return Push(v);
    }
    uint64_t u = n == 0 ? 0 : ReadUInt(static_cast<int>(n));
    if (n > 0 && n < 8 && (u >> (8 * n - 1)) & 1) u |= ~uint64_t{0} << (8 * n);  // sign-extend
    v.kind = Kind::kInt;
    v.i = static_cast<int64_t>(u);
    return Push(v);
  }

  Status Execute(Value* result) {
    std::vector<Value> items;
    while (true) {
      op_pos_ = pos_;
      EMBSTORE_RETURN_IF_ERROR(Need(1));
      const uint8_t op = static_cast<uint8_t>(d_[pos_++]);
      Value v, k, *top = nullptr;
      switch (op) {
        case 0x80: {  // PROTO
          EMBSTORE_RETURN_IF_ERROR(Need(1));
          const uint64_t proto = ReadUInt(1);
          if (proto > 5) {
            return Status::NotSupported("data.pkl uses pickle protocol " + std::to_string(proto) +
                                        "; protocols up to 5 are supported");
          }
          break;
        }
        case 0x95:  // FRAME: a length prefix we do not need
          EMBSTORE_RETURN_IF_ERROR(Need(8));
          if (ReadUInt(8) > d_.size() - pos_) return Truncated();
          break;
        case '.':  // STOP
          EMBSTORE_RETURN_IF_ERROR(Pop(result));
          return Status::OK();
        case '(':  // MARK
          if (marks_.size() >= limits_.max_marks) return Malformed("too many nested MARKs");
          marks_.push_back(stack_.size());
          break;
        case '0':  // POP
          if (stack_.size() > Floor()) {
            stack_.pop_back();
          } else {
            EMBSTORE_RETURN_IF_ERROR(PopMark(&items));
          }
          break;
        case '1':  // POP_MARK
          EMBSTORE_RETURN_IF_ERROR(PopMark(&items));
          break;
        case '2':  // DUP
          EMBSTORE_RETURN_IF_ERROR(Top(&top));
          EMBSTORE_RETURN_IF_ERROR(Push(*top));
          break;
        case 'N':
          EMBSTORE_RETURN_IF_ERROR(Push(Value{}));
          break;
        case 0x88:  // NEWTRUE
        case 0x89:  // NEWFALSE
          v.kind = Kind::kBool;
          v.i = op == 0x88;
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        case 'J':  // BININT
          EMBSTORE_RETURN_IF_ERROR(Need(4));
          v.kind = Kind::kInt;
          v.i = static_cast<int32_t>(static_cast<uint32_t>(ReadUInt(4)));
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        case 'K':  // BININT1
        case 'M':  // BININT2
          EMBSTORE_RETURN_IF_ERROR(Need(op == 'K' ? 1 : 2));
          v.kind = Kind::kInt;
          v.i = static_cast<int64_t>(ReadUInt(op == 'K' ? 1 : 2));
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        case 0x8a:  // LONG1
          EMBSTORE_RETURN_IF_ERROR(Need(1));
          EMBSTORE_RETURN_IF_ERROR(Long(ReadUInt(1)));
          break;
        case 0x8b: {  // LONG4
          EMBSTORE_RETURN_IF_ERROR(Need(4));
          const int32_t n = static_cast<int32_t>(static_cast<uint32_t>(ReadUInt(4)));
          if (n < 0) return Malformed("negative LONG4 length");
          EMBSTORE_RETURN_IF_ERROR(Long(static_cast<uint64_t>(n)));
          break;
        }
        case 'G': {  // BINFLOAT: big-endian IEEE double
          EMBSTORE_RETURN_IF_ERROR(Need(8));
          uint64_t bits = 0;
          for (int b = 0; b < 8; ++b) bits = (bits << 8) | static_cast<uint8_t>(d_[pos_ + b]);
          pos_ += 8;
          v.kind = Kind::kFloat;
          std::memcpy(&v.f, &bits, 8);
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        }
        case 'X':  // BINUNICODE
        case 'B':  // BINBYTES
          EMBSTORE_RETURN_IF_ERROR(Need(4));
          EMBSTORE_RETURN_IF_ERROR(String(op == 'X' ? Kind::kString : Kind::kBytes, ReadUInt(4)));
          break;
        case 0x8c:  // SHORT_BINUNICODE
        case 'C':   // SHORT_BINBYTES
        case 'U':   // SHORT_BINSTRING (Python 2 str)
          EMBSTORE_RETURN_IF_ERROR(Need(1));
          EMBSTORE_RETURN_IF_ERROR(String(op == 'C' ? Kind::kBytes : Kind::kString, ReadUInt(1)));
          break;
        case 0x8d:  // BINUNICODE8
        case 0x8e:  // BINBYTES8
        case 0x96:  // BYTEARRAY8
          EMBSTORE_RETURN_IF_ERROR(Need(8));
          EMBSTORE_RETURN_IF_ERROR(String(op == 0x8d ? Kind::kString : Kind::kBytes, ReadUInt(8)));
          break;
        case 'T': {  // BINSTRING (Python 2 str)
          EMBSTORE_RETURN_IF_ERROR(Need(4));
          const int32_t n = static_cast<int32_t>(static_cast<uint32_t>(ReadUInt(4)));
          if (n < 0) return Malformed("negative BINSTRING length");
          EMBSTORE_RETURN_IF_ERROR(String(Kind::kString, static_cast<uint64_t>(n)));
          break;
        }
        case '}':  // EMPTY_DICT
        case ']':  // EMPTY_LIST
        case ')':  // EMPTY_TUPLE
          EMBSTORE_RETURN_IF_ERROR(NewObj(op == '}'   ? Kind::kDict
                                          : op == ']' ? Kind::kList
                                                      : Kind::kTuple,
                                          &v));
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        case 't':  // TUPLE
        case 'l':  // LIST
          EMBSTORE_RETURN_IF_ERROR(PopMark(&items));
          EMBSTORE_RETURN_IF_ERROR(
              MakeSequence(op == 't' ? Kind::kTuple : Kind::kList, std::move(items), &v));
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        case 0x85:    // TUPLE1
        case 0x86:    // TUPLE2
        case 0x87: {  // TUPLE3
          const size_t n = op - 0x84;
          if (stack_.size() - Floor() < n) return Malformed("stack underflow");
          items.assign(stack_.end() - static_cast<ptrdiff_t>(n), stack_.end());
          stack_.resize(stack_.size() - n);
          EMBSTORE_RETURN_IF_ERROR(MakeSequence(Kind::kTuple, std::move(items), &v));
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        }
        case 'd':  // DICT
          EMBSTORE_RETURN_IF_ERROR(PopMark(&items));
          if (items.size() % 2 != 0) return Malformed("DICT with an odd number of items");
          EMBSTORE_RETURN_IF_ERROR(NewObj(Kind::kDict, &v));
          for (size_t i = 0; i < items.size(); i += 2)
            EMBSTORE_RETURN_IF_ERROR(SetItem(v, items[i], items[i + 1]));
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        case 's':  // SETITEM
          EMBSTORE_RETURN_IF_ERROR(Pop(&v));
          EMBSTORE_RETURN_IF_ERROR(Pop(&k));
          EMBSTORE_RETURN_IF_ERROR(Top(&top));
          EMBSTORE_RETURN_IF_ERROR(SetItem(*top, k, v));
          break;
        case 'u':  // SETITEMS
          EMBSTORE_RETURN_IF_ERROR(PopMark(&items));
          if (items.size() % 2 != 0) return Malformed("SETITEMS with an odd number of items");
          EMBSTORE_RETURN_IF_ERROR(Top(&top));
          for (size_t i = 0; i < items.size(); i += 2)
            EMBSTORE_RETURN_IF_ERROR(SetItem(*top, items[i], items[i + 1]));
          break;
        case 'a':  // APPEND
          EMBSTORE_RETURN_IF_ERROR(Pop(&v));
          EMBSTORE_RETURN_IF_ERROR(Top(&top));
          EMBSTORE_RETURN_IF_ERROR(Append(*top, v));
          break;
        case 'e':  // APPENDS
          EMBSTORE_RETURN_IF_ERROR(PopMark(&items));
          EMBSTORE_RETURN_IF_ERROR(Top(&top));
          for (const Value& item : items) EMBSTORE_RETURN_IF_ERROR(Append(*top, item));
          break;
        case 'q':  // BINPUT
          EMBSTORE_RETURN_IF_ERROR(Need(1));
          EMBSTORE_RETURN_IF_ERROR(Memoize(ReadUInt(1)));
          break;
        case 'r':  // LONG_BINPUT
          EMBSTORE_RETURN_IF_ERROR(Need(4));
          EMBSTORE_RETURN_IF_ERROR(Memoize(ReadUInt(4)));
          break;
        case 0x94:  // MEMOIZE
          EMBSTORE_RETURN_IF_ERROR(Memoize(memo_.size()));
          break;
        case 'h':    // BINGET
        case 'j': {  // LONG_BINGET
          const int n = op == 'h' ? 1 : 4;
          EMBSTORE_RETURN_IF_ERROR(Need(n));
          auto it = memo_.find(ReadUInt(n));
          if (it == memo_.end()) return Malformed("reference to an unknown memo entry");
          EMBSTORE_RETURN_IF_ERROR(Push(it->second));
          break;
        }
        case 'c': {  // GLOBAL
          std::string module, name;
          EMBSTORE_RETURN_IF_ERROR(ReadLine(&module));
          EMBSTORE_RETURN_IF_ERROR(ReadLine(&name));
          EMBSTORE_RETURN_IF_ERROR(ResolveGlobal(module, name, &v));
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          EMBSTORE_RETURN_IF_ERROR(Pop(&v));
          EMBSTORE_RETURN_IF_ERROR(Pop(&k));
          if (v.kind != Kind::kString || k.kind != Kind::kString)
            return Malformed("STACK_GLOBAL of non-strings");
          const std::string module = k.obj->text.substr(0, 256), name = v.obj->text.substr(0, 256);
          EMBSTORE_RETURN_IF_ERROR(ResolveGlobal(module, name, &v));
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        }
        case 'i': {  // INST: instantiates a class; never allowed
          std::string module, name;
          EMBSTORE_RETURN_IF_ERROR(ReadLine(&module));
          EMBSTORE_RETURN_IF_ERROR(ReadLine(&name));
          return Refused(module + "." + name);
        }
        case 'R': {  // REDUCE
          Value callable;
          EMBSTORE_RETURN_IF_ERROR(Pop(&k));
          EMBSTORE_RETURN_IF_ERROR(Pop(&callable));
          EMBSTORE_RETURN_IF_ERROR(Call(callable, k, &v));
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        }
        case 0x81: {  // NEWOBJ: cls.__new__(cls, *args); only OrderedDict
          Value cls;
          EMBSTORE_RETURN_IF_ERROR(Pop(&k));
          EMBSTORE_RETURN_IF_ERROR(Pop(&cls));
          if (cls.kind != Kind::kGlobal || kGlobals[cls.i].kind != GlobalKind::kOrderedDict) {
            return cls.kind == Kind::kGlobal ? Refused(kGlobals[cls.i].name)
                                             : Malformed("NEWOBJ of a non-class");
          }
          EMBSTORE_RETURN_IF_ERROR(NewObj(Kind::kDict, &v));
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        }
        case 'b':  // BUILD: only the __dict__ state torch attaches to OrderedDicts/tensors,
                   // and a numpy dtype's state (version, byte order, ...)
          EMBSTORE_RETURN_IF_ERROR(Pop(&v));
          EMBSTORE_RETURN_IF_ERROR(Top(&top));
          if (top->kind == Kind::kNumpyDType) {
            if (v.kind == Kind::kTuple && v.obj->items.size() >= 2 &&
                v.obj->items[1].kind == Kind::kString && v.obj->items[1].obj->text.size() == 1) {
              top->obj->text[0] = v.obj->items[1].obj->text[0];
            }
            break;
          }
          if (top->kind != Kind::kDict && top->kind != Kind::kTensor) {
            return Malformed(std::string("BUILD on a ") + KindName(top->kind));
          }
          break;
        case 'Q':  // BINPERSID
          EMBSTORE_RETURN_IF_ERROR(Pop(&k));
          EMBSTORE_RETURN_IF_ERROR(PersistentLoad(k, &v));
          EMBSTORE_RETURN_IF_ERROR(Push(v));
          break;
        default: {
          char printable[8] = "";
          if (op >= 0x20 && op < 0x7f) std::snprintf(printable, sizeof(printable), " ('%c')", op);
          char hex[8];
          std::snprintf(hex, sizeof(hex), "0x%02x", op);
          return Status::InvalidArgument(
              std::string("data.pkl uses pickle opcode ") + hex + printable + " at byte " +
              std::to_string(op_pos_) +
              ", which embstore does not support (only tensors and plain containers "
              "are accepted)");
        }
      }
    }
  }

  // ---- flattening
  Status Flatten(const Value& v, std::string* key, int depth, Contents* out) {
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
    if (!on_path_.insert(v.obj).second)
      return Status::OK();  // a reference cycle: nothing new below
    const size_t base = key->size();
    const auto& items = v.obj->items;
    const bool is_dict = v.kind == Kind::kDict;
    const size_t n = is_dict ? items.size() / 2 : items.size();
    std::string component;
    Status status;
    for (size_t i = 0; i < n && status.ok(); ++i) {
      if (is_dict) {
        if (!KeyComponent(items[2 * i], &component)) continue;
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

}  // namespace

Result<Contents> ParseTorchPickle(std::string_view data, const Limits& limits) {
  return Machine(data, limits).Run();
}

}  // namespace embstore::storage::pickle
