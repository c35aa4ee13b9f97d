// The pickle machine: opcodes, stack, memo and the limits on what they build.
// The torch globals are in pickle_torch.cc, the flattening in pickle_flatten.cc.
#include "checkpoint/pickle.h"

#include <cstdio>
#include <cstring>

#include "checkpoint/pickle_internal.h"

namespace embstore::storage::pickle {
namespace internal {

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
bool KeyString(const Value& k, KeyUse use, std::string* out) {
  const bool canonical = use == KeyUse::kCanonical;
  switch (k.kind) {
    case Kind::kString:
      *out = std::string(canonical ? "s" : "").append(k.obj->text);
      return true;
    case Kind::kBytes:
      if (!canonical) return false;
      out->assign("b").append(k.obj->text);
      return true;
    case Kind::kInt:
      *out = std::string(canonical ? "i" : "").append(std::to_string(k.i));
      return true;
    case Kind::kBool:
      if (canonical) {
        out->assign("i").append(std::to_string(k.i));
      } else {
        out->assign(k.i ? "True" : "False");
      }
      return true;
    case Kind::kNone:
      out->assign(canonical ? "n" : "None");
      return true;
    default:
      return false;
  }
}

Result<Contents> Machine::Run() {
  Value root;
  EMBSTORE_RETURN_IF_ERROR(Execute(&root));
  Contents contents;
  std::string key;
  EMBSTORE_RETURN_IF_ERROR(Flatten(root, &key, 0, &contents));
  contents.storages = std::move(storages_);
  return contents;
}

Status Machine::Truncated() const {
  return Status::Corruption(
      "data.pkl is truncated or malformed (needed bytes past its end at byte " +
      std::to_string(pos_) + ")");
}

Status Machine::Malformed(const std::string& what) const {
  return Status::Corruption("data.pkl is malformed: " + what + " (at byte " +
                            std::to_string(op_pos_) + ")");
}

Status Machine::Refused(const std::string& global) {
  return Status::InvalidArgument(
      "checkpoint refers to '" + global +
      "', which embstore does not load (only tensors and plain containers "
      "are accepted)");
}

Status Machine::Need(uint64_t n) const {
  return n <= d_.size() - pos_ ? Status::OK() : Truncated();
}

uint64_t Machine::ReadUInt(int bytes) {
  uint64_t v = 0;
  for (int b = bytes - 1; b >= 0; --b) v = (v << 8) | static_cast<uint8_t>(d_[pos_ + b]);
  pos_ += bytes;
  return v;
}

Status Machine::ReadLine(std::string* out) {
  const size_t nl = d_.find('\n', pos_);
  if (nl == std::string_view::npos) return Truncated();
  if (nl - pos_ > 256) return Malformed("global name too long");
  out->assign(d_.substr(pos_, nl - pos_));
  pos_ = nl + 1;
  return Status::OK();
}

Status Machine::NewObj(Kind kind, Value* v) {
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

Status Machine::CountCells(size_t n) {
  cells_ += n;
  if (cells_ > limits_.max_objects * 4) {
    return Status::InvalidArgument("data.pkl holds too many container items; refusing to load it");
  }
  return Status::OK();
}

size_t Machine::Floor() const { return marks_.empty() ? 0 : marks_.back(); }

Status Machine::Push(Value v) {
  if (stack_.size() >= limits_.max_stack) return Malformed("stack too deep");
  stack_.push_back(v);
  return Status::OK();
}

Status Machine::Pop(Value* v) {
  if (stack_.size() <= Floor()) return Malformed("stack underflow");
  *v = stack_.back();
  stack_.pop_back();
  return Status::OK();
}

Status Machine::Top(Value** v) {
  if (stack_.size() <= Floor()) return Malformed("stack underflow");
  *v = &stack_.back();
  return Status::OK();
}

Status Machine::PopMark(std::vector<Value>* items) {
  if (marks_.empty()) return Malformed("no MARK on the stack");
  const size_t m = marks_.back();
  marks_.pop_back();
  items->assign(stack_.begin() + static_cast<ptrdiff_t>(m), stack_.end());
  stack_.resize(m);
  return Status::OK();
}

Status Machine::MakeSequence(Kind kind, std::vector<Value> items, Value* out) {
  EMBSTORE_RETURN_IF_ERROR(NewObj(kind, out));
  EMBSTORE_RETURN_IF_ERROR(CountCells(items.size()));
  out->obj->items = std::move(items);
  return Status::OK();
}

Status Machine::SetItem(Value& dict, const Value& k, const Value& v) {
  if (dict.kind != Kind::kDict)
    return Malformed(std::string("SETITEM on a ") + KindName(dict.kind));
  Obj* d = dict.obj;
  std::string canon;
  if (KeyString(k, KeyUse::kCanonical, &canon)) {
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

Status Machine::Append(Value& list, const Value& v) {
  if (list.kind != Kind::kList) return Malformed(std::string("APPEND to a ") + KindName(list.kind));
  EMBSTORE_RETURN_IF_ERROR(CountCells(1));
  list.obj->items.push_back(v);
  return Status::OK();
}
Status Machine::Memoize(uint64_t index) {
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

Status Machine::String(Kind kind, uint64_t len) {
  EMBSTORE_RETURN_IF_ERROR(Need(len));
  Value v;
  EMBSTORE_RETURN_IF_ERROR(NewObj(kind, &v));
  v.obj->text.assign(d_.substr(pos_, static_cast<size_t>(len)));
  pos_ += static_cast<size_t>(len);
  return Push(v);
}

Status Machine::Long(uint64_t n) {
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

Status Machine::Execute(Value* result) {
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
        EMBSTORE_RETURN_IF_ERROR(NewObject(cls, &v));
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

}  // namespace internal

Result<Contents> ParseTorchPickle(std::string_view data, const Limits& limits) {
  return internal::Machine(data, limits).Run();
}

}  // namespace embstore::storage::pickle
