// The globals a torch.save pickle may name, and what calling them builds:
// OrderedDicts, tensors rebuilt over persistent-id storages, torch.Size,
// latin-1 bytes and numpy scalars. Everything else is refused.
#include <cstring>
#include <iterator>

#include "checkpoint/pickle_internal.h"
#include "codec/half.h"

namespace embstore::storage::pickle::internal {
namespace {

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

Status IntList(const Value& v, std::vector<int64_t>* out) {
  if (v.kind != Kind::kTuple && v.kind != Kind::kList) return Status::Corruption("not a sequence");
  out->clear();
  for (const Value& x : v.obj->items) {
    if (x.kind != Kind::kInt || x.i < 0) return Status::Corruption("not a non-negative integer");
    out->push_back(x.i);
  }
  return Status::OK();
}

// The number a numpy scalar holds, or None for types that are not plain numbers.
Value NumpyScalar(const std::string& dtype, const std::string& raw) {
  Value v;
  if (dtype.size() < 3 || dtype[0] == '>') return v;  // big-endian: not decoded
  const std::string code = dtype.substr(1);
  auto le = [&](size_t n) {
    uint64_t u = 0;
    for (size_t b = n; b-- > 0;) u = (u << 8) | static_cast<uint8_t>(raw[b]);
    return u;
  };
  const char kind = code[0];
  const size_t n =
      code.size() == 2 && code[1] >= '1' && code[1] <= '8' ? static_cast<size_t>(code[1] - '0') : 0;
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
      v.f = codec::HalfToFloat(static_cast<uint16_t>(le(2)));
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

}  // namespace

Status Machine::ResolveGlobal(const std::string& module, const std::string& name, Value* out) {
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

Status Machine::Call(const Value& callable, const Value& args, Value* out, int depth) {
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
      if (a.size() < 4) return Malformed("_rebuild_tensor needs storage, offset, size and stride");
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

Status Machine::NewObject(const Value& cls, Value* out) {
  if (cls.kind != Kind::kGlobal || kGlobals[cls.i].kind != GlobalKind::kOrderedDict) {
    return cls.kind == Kind::kGlobal ? Refused(kGlobals[cls.i].name)
                                     : Malformed("NEWOBJ of a non-class");
  }
  return NewObj(Kind::kDict, out);
}

Status Machine::PersistentLoad(const Value& pid, Value* out) {
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
}  // namespace embstore::storage::pickle::internal
