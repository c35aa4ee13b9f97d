// NumPy .npz archives (np.savez / np.savez_compressed): a zip of .npy members.
// Stored members are pread in place; deflated ones are decompressed as a stream.
#include <algorithm>
#include <cctype>
#include <cstring>

#include "storage/checkpoint_internal.h"
#include "storage/zip_reader.h"

namespace embstore::storage::ckpt {
namespace {

constexpr size_t kMaxNpyHeaderBytes = size_t{1} << 20;

// The subset of Python literals a .npy header dict uses.
struct PyLiteral {
  enum class Kind { kString, kInt, kBool, kNone, kTuple, kList, kDict };
  Kind kind = Kind::kNone;
  std::string text;  // kString
  int64_t integer = 0;
  bool boolean = false;
  std::vector<PyLiteral> items;   // kTuple, kList; kDict: the values
  std::vector<std::string> keys;  // kDict: the (string) keys, parallel to items
};

class LiteralParser {
 public:
  explicit LiteralParser(std::string_view s) : s_(s) {}

  Status ParseAll(PyLiteral* out) {
    EMBSTORE_RETURN_IF_ERROR(Parse(out, 0));
    SkipSpace();
    if (pos_ != s_.size()) return Error("trailing characters");
    return Status::OK();
  }

 private:
  Status Error(const std::string& what) const {
    return Status::Corruption("malformed .npy header (" + what + " at character " +
                              std::to_string(pos_) + ")");
  }
  void SkipSpace() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool Consume(char c) {
    SkipSpace();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  Status Parse(PyLiteral* out, int depth) {
    if (depth > 8) return Error("nesting too deep");
    SkipSpace();
    if (pos_ >= s_.size()) return Error("unexpected end");
    const char c = s_[pos_];
    if (c == '\'' || c == '"') {
      out->kind = PyLiteral::Kind::kString;
      const char quote = c;
      ++pos_;
      while (pos_ < s_.size() && s_[pos_] != quote) {
        if (s_[pos_] == '\\') return Error("escape in string");
        out->text += s_[pos_++];
      }
      if (pos_ >= s_.size()) return Error("unterminated string");
      ++pos_;
      return Status::OK();
    }
    if (c == '(' || c == '[') {
      out->kind = c == '(' ? PyLiteral::Kind::kTuple : PyLiteral::Kind::kList;
      const char close = c == '(' ? ')' : ']';
      ++pos_;
      while (!Consume(close)) {
        PyLiteral item;
        EMBSTORE_RETURN_IF_ERROR(Parse(&item, depth + 1));
        out->items.push_back(std::move(item));
        if (!Consume(',')) {
          if (!Consume(close)) return Error("expected ',' or closing bracket");
          break;
        }
      }
      return Status::OK();
    }
    if (c == '{') {
      out->kind = PyLiteral::Kind::kDict;
      ++pos_;
      while (!Consume('}')) {
        PyLiteral key, value;
        EMBSTORE_RETURN_IF_ERROR(Parse(&key, depth + 1));
        if (key.kind != PyLiteral::Kind::kString) return Error("non-string key");
        if (!Consume(':')) return Error("expected ':'");
        EMBSTORE_RETURN_IF_ERROR(Parse(&value, depth + 1));
        out->keys.push_back(std::move(key.text));
        out->items.push_back(std::move(value));
        if (!Consume(',')) {
          if (!Consume('}')) return Error("expected ',' or '}'");
          break;
        }
      }
      return Status::OK();
    }
    if (std::isdigit(static_cast<unsigned char>(c)) || c == '-') {
      out->kind = PyLiteral::Kind::kInt;
      bool negative = c == '-';
      if (negative) ++pos_;
      size_t digits = 0;
      uint64_t v = 0;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
        v = v * 10 + static_cast<uint64_t>(s_[pos_++] - '0');
        if (++digits > 18) return Error("integer too large");
      }
      if (digits == 0) return Error("bad integer");
      if (pos_ < s_.size() && s_[pos_] == 'L') ++pos_;  // Python 2 long suffix
      out->integer = negative ? -static_cast<int64_t>(v) : static_cast<int64_t>(v);
      return Status::OK();
    }
    for (const char* word : {"True", "False", "None"}) {
      const size_t n = std::strlen(word);
      if (s_.substr(pos_, n) == word) {
        pos_ += n;
        out->kind = word[0] == 'N' ? PyLiteral::Kind::kNone : PyLiteral::Kind::kBool;
        out->boolean = word[0] == 'T';
        return Status::OK();
      }
    }
    return Error("unexpected character");
  }

  std::string_view s_;
  size_t pos_ = 0;
};

// Maps a NumPy type string ("<f4", "|b1", ">i8") onto our names and item size.
void DescribeDescr(const std::string& descr, NpyHeader* h) {
  h->dtype = descr;
  h->source_dtype = SourceDType::kOther;
  h->item_size = 0;
  if (descr.size() < 2) return;
  const char order = descr[0];
  std::string code = descr.substr(1);
  if (order != '<' && order != '|' && order != '=' && order != '>') return;
  const char kind = code[0];
  int64_t n = 0;
  size_t i = 1;
  for (; i < code.size() && std::isdigit(static_cast<unsigned char>(code[i])) && n < 1000000; ++i) {
    n = n * 10 + (code[i] - '0');
  }
  if (kind == 'O') {
    h->dtype = "object";  // pickled Python objects: never read
    return;
  }
  if (std::strchr("biufcSV", kind) != nullptr && i == code.size() && n > 0) h->item_size = n;
  if (kind == 'U' && i == code.size() && n > 0) h->item_size = 4 * n;
  if (order == '>' && h->item_size > 1) return;  // big-endian: listed by its descr, never read
  static const struct {
    const char* code;
    const char* name;
    SourceDType dtype;
  } kNames[] = {
      {"f4", "f32", SourceDType::kF32},         {"f8", "f64", SourceDType::kF64},
      {"f2", "f16", SourceDType::kF16},         {"i1", "int8", SourceDType::kOther},
      {"i2", "int16", SourceDType::kOther},     {"i4", "int32", SourceDType::kOther},
      {"i8", "int64", SourceDType::kOther},     {"u1", "uint8", SourceDType::kOther},
      {"u2", "uint16", SourceDType::kOther},    {"u4", "uint32", SourceDType::kOther},
      {"u8", "uint64", SourceDType::kOther},    {"b1", "bool", SourceDType::kOther},
      {"c8", "complex64", SourceDType::kOther}, {"c16", "complex128", SourceDType::kOther}};
  for (const auto& k : kNames) {
    if (code == k.code) {
      h->dtype = k.name;
      h->source_dtype = k.dtype;
      return;
    }
  }
}

}  // namespace

Status ParseNpyHeader(std::string_view p, NpyHeader* header, size_t* needed) {
  static constexpr char kMagic[] = "\x93NUMPY";
  const size_t check = std::min<size_t>(p.size(), 6);
  if (std::memcmp(p.data(), kMagic, check) != 0)
    return Status::Corruption("not a .npy (bad magic)");
  if (p.size() < 10) {
    *needed = 12;
    return Status::OK();
  }
  const uint8_t major = static_cast<uint8_t>(p[6]), minor = static_cast<uint8_t>(p[7]);
  size_t start;
  uint64_t header_len;
  if (major == 1) {
    start = 10;
    header_len = static_cast<uint8_t>(p[8]) | (static_cast<uint8_t>(p[9]) << 8);
  } else if (major == 2 || major == 3) {
    if (p.size() < 12) {
      *needed = 12;
      return Status::OK();
    }
    start = 12;
    header_len = 0;
    for (int i = 3; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(p[8 + i]);
  } else {
    return Status::NotSupported(".npy format version " + std::to_string(major) + "." +
                                std::to_string(minor) + " is not supported");
  }
  if (header_len > kMaxNpyHeaderBytes) {
    return Status::Corruption(".npy header length " + std::to_string(header_len) +
                              " is implausibly large");
  }
  const size_t total = start + static_cast<size_t>(header_len);
  if (p.size() < total) {
    *needed = total;
    return Status::OK();
  }
  *needed = 0;
  PyLiteral dict;
  EMBSTORE_RETURN_IF_ERROR(LiteralParser(p.substr(start, header_len)).ParseAll(&dict));
  if (dict.kind != PyLiteral::Kind::kDict)
    return Status::Corruption("malformed .npy header (not a dict)");
  const PyLiteral *descr = nullptr, *fortran = nullptr, *shape = nullptr;
  for (size_t i = 0; i < dict.keys.size(); ++i) {
    if (dict.keys[i] == "descr") descr = &dict.items[i];
    if (dict.keys[i] == "fortran_order") fortran = &dict.items[i];
    if (dict.keys[i] == "shape") shape = &dict.items[i];
  }
  if (descr == nullptr || fortran == nullptr || shape == nullptr) {
    return Status::Corruption("malformed .npy header (needs descr, fortran_order and shape)");
  }
  NpyHeader h;
  if (descr->kind != PyLiteral::Kind::kString) {
    h.dtype = "structured";  // record arrays: listed, never read
  } else {
    DescribeDescr(descr->text, &h);
  }
  if (fortran->kind != PyLiteral::Kind::kBool)
    return Status::Corruption("malformed .npy header (fortran_order)");
  h.fortran_order = fortran->boolean;
  if (shape->kind != PyLiteral::Kind::kTuple)
    return Status::Corruption("malformed .npy header (shape)");
  for (const PyLiteral& d : shape->items) {
    if (d.kind != PyLiteral::Kind::kInt || d.integer < 0) {
      return Status::Corruption(
          "malformed .npy header (shape entries must be non-negative integers)");
    }
    h.shape.push_back(d.integer);
  }
  if (!NumElements(h.shape))
    return Status::Corruption(".npy shape " + ShapeString(h.shape) + " is too large");
  h.data_offset = total;
  *header = std::move(h);
  return Status::OK();
}

namespace {

class NpzFile final : public CheckpointFile {
 public:
  static Result<std::unique_ptr<CheckpointFile>> Open(const std::string& path) {
    EMBSTORE_ASSIGN_OR_RETURN(std::shared_ptr<File> file, File::Open(path));
    EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ZipArchive> zip, ZipArchive::Open(file));
    std::unique_ptr<NpzFile> npz(new NpzFile(path, std::move(zip)));
    EMBSTORE_RETURN_IF_ERROR(npz->ReadHeaders());
    return std::unique_ptr<CheckpointFile>(std::move(npz));
  }

  const std::vector<TensorEntry>& tensors() const override { return entries_; }

  Result<std::unique_ptr<TensorReader>> OpenTensor(size_t index) override {
    const Member& m = members_[index];
    int64_t rows, dim;
    EMBSTORE_RETURN_IF_ERROR(CheckImportable(entries_[index], &rows, &dim));
    EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source,
                              zip_->OpenMember(*m.zip_member, m.header.data_offset));
    TensorLayout layout;
    layout.dtype = m.header.source_dtype;
    layout.rows = rows;
    layout.dim = dim;
    layout.row_stride = m.header.fortran_order ? 1 : dim;
    layout.col_stride = m.header.fortran_order ? rows : 1;
    const std::string name = path_ + ":" + entries_[index].key;
    EMBSTORE_RETURN_IF_ERROR(ValidateLayout(layout, source->size(), name));
    return std::unique_ptr<TensorReader>(
        std::make_unique<StridedTensorReader>(name, layout, std::move(source)));
  }

  Result<double> ReadTensorScalar(size_t index) override {
    const Member& m = members_[index];
    EMBSTORE_ASSIGN_OR_RETURN(std::unique_ptr<ByteSource> source,
                              zip_->OpenMember(*m.zip_member, m.header.data_offset));
    return ReadElement(*source, m.header.dtype, 0);
  }

 private:
  struct Member {
    const ZipMember* zip_member;
    NpyHeader header;
  };

  NpzFile(std::string path, std::unique_ptr<ZipArchive> zip)
      : path_(std::move(path)), zip_(std::move(zip)) {}

  Status ReadHeaders() {
    for (const ZipMember& zm : zip_->members()) {
      if (zm.name.size() < 4 || zm.name.compare(zm.name.size() - 4, 4, ".npy") != 0) continue;
      const std::string where = "'" + path_ + "' member '" + zm.name + "'";
      NpyHeader header;
      size_t want = 4096, needed = 0;
      for (int attempt = 0; attempt < 3; ++attempt) {
        EMBSTORE_ASSIGN_OR_RETURN(std::string prefix, zip_->ReadMemberPrefix(zm, want));
        Status s = ParseNpyHeader(prefix, &header, &needed);
        if (!s.ok()) return Status(s).WithContext(where);
        if (needed == 0) break;
        if (prefix.size() < want || needed <= want) {
          return Status::Corruption(where + ": the .npy header is truncated");
        }
        want = needed;
      }
      if (needed != 0) return Status::Corruption(where + ": the .npy header is truncated");
      if (header.item_size > 0 && header.dtype != "object") {
        const int64_t numel = *NumElements(header.shape);
        const __int128 bytes = static_cast<__int128>(numel) * header.item_size;
        const uint64_t available = zm.uncompressed_size - header.data_offset;
        if (header.data_offset > zm.uncompressed_size || bytes > static_cast<__int128>(available)) {
          return Status::Corruption(where + ": shape " + ShapeString(header.shape) + " of " +
                                    header.dtype +
                                    " needs more bytes than the member holds (truncated?)");
        }
      }
      TensorEntry e;
      e.key = zm.name.substr(0, zm.name.size() - 4);
      e.dtype = header.dtype;
      e.shape = header.shape;
      entries_.push_back(std::move(e));
      members_.push_back(Member{&zm, std::move(header)});
    }
    if (entries_.empty()) {
      return Status::InvalidArgument("'" + path_ +
                                     "' is a zip archive without .npy members (not a .npz)");
    }
    return Status::OK();
  }

  std::string path_;
  std::unique_ptr<ZipArchive> zip_;
  std::vector<TensorEntry> entries_;
  std::vector<Member> members_;
};

}  // namespace

Result<std::unique_ptr<CheckpointFile>> OpenNpzFile(const std::string& path) {
  return NpzFile::Open(path);
}

}  // namespace embstore::storage::ckpt
