#include "checkpoint/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>

#include "checkpoint/checkpoint_internal.h"
#include "checkpoint/tensor_reader.h"
#include "util/io_util.h"

namespace embstore::storage {
namespace {

constexpr uint64_t kMaxHeaderLen = 1u << 20;  // numpy itself writes < 64 KiB
constexpr size_t kMaxDims = 64;               // numpy 2's NPY_MAXDIMS (numpy 1: 32)
constexpr int kMaxDepth = 16;                 // bounds recursion over structured descrs
constexpr int64_t kMaxItemSize = int64_t{1} << 30;
constexpr size_t kFirstRead = 4096;  // holds every header numpy writes for ordinary arrays

// A recursive-descent parser for the Python dict literal of a .npy header. It
// keeps only what the three keys say; other values (a structured descr, unknown
// keys) are checked for syntax and skipped, so a hostile header costs no memory
// beyond its own bytes.
class HeaderDictParser {
 public:
  explicit HeaderDictParser(std::string_view s) : s_(s) {}

  Status Parse(RawNpyHeader* h) {
    bool have_descr = false, have_order = false, have_shape = false;
    if (!Consume('{')) return Error("expected '{'");
    while (!Consume('}')) {
      std::string key;
      SkipSpace();
      EMBSTORE_RETURN_IF_ERROR(ParseString(&key));
      if (!Consume(':')) return Error("expected ':' after key '" + key + "'");
      SkipSpace();
      if (key == "descr") {
        h->structured = Peek() == '[';
        if (h->structured) {
          h->descr.clear();
          EMBSTORE_RETURN_IF_ERROR(SkipValue(1));
        } else if (Peek() == '\'' || Peek() == '"') {
          EMBSTORE_RETURN_IF_ERROR(ParseString(&h->descr));
        } else {
          return Error("'descr' must be a string or a list of fields");
        }
        have_descr = true;
      } else if (key == "fortran_order") {
        if (ConsumeWord("True")) {
          h->fortran_order = true;
        } else if (ConsumeWord("False")) {
          h->fortran_order = false;
        } else {
          return Error("'fortran_order' must be True or False");
        }
        have_order = true;
      } else if (key == "shape") {
        h->shape.clear();
        EMBSTORE_RETURN_IF_ERROR(ParseShape(&h->shape));
        have_shape = true;
      } else {
        h->extra_keys.push_back(key);
        EMBSTORE_RETURN_IF_ERROR(SkipValue(1));
      }
      if (!Consume(',')) {
        if (!Consume('}')) return Error("expected ',' or '}'");
        break;
      }
    }
    SkipSpace();
    if (pos_ != s_.size()) return Error("trailing characters after the dict");
    if (!have_descr || !have_order || !have_shape) {
      return Error("header lacks one of 'descr', 'fortran_order', 'shape'");
    }
    return Status::OK();
  }

 private:
  Status Error(const std::string& what) const {
    return Status::InvalidArgument("malformed .npy header (" + what + " at character " +
                                   std::to_string(pos_) + ")");
  }
  char Peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
  void SkipSpace() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool Consume(char c) {
    SkipSpace();
    if (Peek() != c) return false;
    ++pos_;
    return true;
  }
  // A keyword, not the start of a longer identifier ("Truex").
  bool ConsumeWord(std::string_view w) {
    if (s_.substr(pos_, w.size()) != w) return false;
    const size_t end = pos_ + w.size();
    if (end < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[end])) || s_[end] == '_')) {
      return false;
    }
    pos_ = end;
    return true;
  }
  // REQUIRES: no leading space.
  Status ParseString(std::string* out) {
    const char quote = Peek();
    if (quote != '\'' && quote != '"') return Error("expected a string");
    const size_t end = s_.find(quote, pos_ + 1);
    if (end == std::string_view::npos) return Error("unterminated string");
    const std::string_view body = s_.substr(pos_ + 1, end - pos_ - 1);
    // numpy never writes escapes; refusing them keeps strings verbatim.
    if (body.find('\\') != std::string_view::npos) return Error("escape sequence in a string");
    out->assign(body);
    pos_ = end + 1;
    return Status::OK();
  }
  // An optionally negative decimal integer, with the "L" suffix of Python 2 longs.
  Status ParseInt(int64_t* out) {
    SkipSpace();
    const bool negative = Peek() == '-';
    if (negative) ++pos_;
    const size_t start = pos_;
    int64_t v = 0;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
      const int digit = s_[pos_] - '0';
      if (v > (std::numeric_limits<int64_t>::max() - digit) / 10) {
        return Error("integer too large");
      }
      v = v * 10 + digit;
      ++pos_;
    }
    if (pos_ == start) return Error("expected an integer");
    if (Peek() == 'L' || Peek() == 'l') ++pos_;
    *out = negative ? -v : v;
    return Status::OK();
  }
  Status ParseShape(std::vector<int64_t>* shape) {
    if (!Consume('(')) return Error("'shape' must be a tuple");
    while (!Consume(')')) {
      if (shape->size() >= kMaxDims) return Error("too many dimensions");
      int64_t d = 0;
      EMBSTORE_RETURN_IF_ERROR(ParseInt(&d));
      if (d < 0) return Error("negative dimension");
      shape->push_back(d);
      if (!Consume(',')) {
        if (!Consume(')')) return Error("expected ',' or ')' in shape");
        break;
      }
    }
    return Status::OK();
  }
  // Checks the syntax of one literal (string, integer, True/False/None, tuple,
  // list or dict of those) and moves past it.
  Status SkipValue(int depth) {
    if (depth > kMaxDepth) return Error("nesting too deep");
    SkipSpace();
    const char c = Peek();
    if (c == '\'' || c == '"') {
      std::string ignored;
      return ParseString(&ignored);
    }
    if (c == '(' || c == '[' || c == '{') {
      const char close = c == '(' ? ')' : c == '[' ? ']' : '}';
      ++pos_;
      while (!Consume(close)) {
        EMBSTORE_RETURN_IF_ERROR(SkipValue(depth + 1));
        if (c == '{') {
          if (!Consume(':')) return Error("expected ':'");
          EMBSTORE_RETURN_IF_ERROR(SkipValue(depth + 1));
        }
        if (!Consume(',')) {
          if (!Consume(close)) return Error(std::string("expected ',' or '") + close + "'");
          break;
        }
      }
      return Status::OK();
    }
    if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) {
      int64_t ignored = 0;
      return ParseInt(&ignored);
    }
    if (ConsumeWord("True") || ConsumeWord("False") || ConsumeWord("None")) return Status::OK();
    return Error(pos_ < s_.size() ? "unexpected character" : "unexpected end");
  }

  std::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

NpyDType DecodeNpyDescr(std::string_view descr) {
  NpyDType t;
  t.name = std::string(descr);
  if (descr.size() < 2 || std::string_view("<>|=").find(descr[0]) == std::string_view::npos) {
    // Quoted, so that a descr such as 'f32' or 'object' never passes for one of our names.
    t.name = "'" + t.name + "'";
    return t;
  }
  const char kind = descr[1];
  if (kind == 'O') {  // pickled Python objects ("|O", "|O8" from Python 2): listed, never read
    t.kind = 'O';
    t.name = "object";
    return t;
  }
  if (std::string_view("biufcmMSUV").find(kind) == std::string_view::npos) return t;
  t.kind = kind;
  // The item size: digits only; datetimes with a unit ("<M8[ns]") keep size 0.
  int64_t n = 0;
  for (size_t i = 2; i < descr.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(descr[i])) || n > kMaxItemSize) return t;
    n = n * 10 + (descr[i] - '0');
  }
  if (n <= 0 || n > kMaxItemSize / 4) return t;
  t.item_size = kind == 'U' ? 4 * n : n;  // 'U' counts UCS-4 characters
  t.big_endian = descr[0] == '>' && t.item_size > 1;
  if (t.big_endian) return t;
  static constexpr struct {
    std::string_view code;
    const char* name;
  } kNames[] = {{"f4", "f32"},       {"f8", "f64"},        {"f2", "f16"},    {"i1", "int8"},
                {"i2", "int16"},     {"i4", "int32"},      {"i8", "int64"},  {"u1", "uint8"},
                {"u2", "uint16"},    {"u4", "uint32"},     {"u8", "uint64"}, {"b1", "bool"},
                {"c8", "complex64"}, {"c16", "complex128"}};
  for (const auto& k : kNames) {
    if (descr.substr(1) == k.code) {
      t.name = k.name;
      break;
    }
  }
  return t;
}

Result<RawNpyHeader> ParseNpyHeaderPrefix(std::string_view p, size_t* needed) {
  *needed = 0;
  if (!p.empty() && std::memcmp(p.data(), kNpyMagic, std::min(p.size(), sizeof(kNpyMagic))) != 0) {
    return Status::InvalidArgument("not a .npy file (bad magic)");
  }
  // 12 bytes hold the preamble of every version.
  if (p.size() < 10) {
    *needed = 12;
    return RawNpyHeader{};
  }
  const uint8_t major = static_cast<uint8_t>(p[6]), minor = static_cast<uint8_t>(p[7]);
  size_t preamble = 0;
  uint64_t header_len = 0;
  if (major == 1) {
    preamble = 10;
    header_len =
        static_cast<uint8_t>(p[8]) | (static_cast<uint64_t>(static_cast<uint8_t>(p[9])) << 8);
  } else if (major == 2 || major == 3) {
    if (p.size() < 12) {
      *needed = 12;
      return RawNpyHeader{};
    }
    preamble = 12;
    for (int i = 3; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(p[8 + i]);
  } else {
    return Status::NotSupported("unsupported .npy format version " + std::to_string(major) + "." +
                                std::to_string(minor));
  }
  if (header_len > kMaxHeaderLen) {
    return Status::InvalidArgument("absurd .npy header length " + std::to_string(header_len));
  }
  const size_t total = preamble + static_cast<size_t>(header_len);
  if (p.size() < total) {
    *needed = total;
    return RawNpyHeader{};
  }
  RawNpyHeader h;
  h.major_version = major;
  EMBSTORE_RETURN_IF_ERROR(HeaderDictParser(p.substr(preamble, header_len)).Parse(&h));
  if (h.structured) {
    h.dtype.name = "structured";
  } else {
    h.dtype = DecodeNpyDescr(h.descr);
  }
  for (int64_t d : h.shape) {
    if (d != 0 && h.num_elements > std::numeric_limits<int64_t>::max() / d) {
      std::string dims;
      for (int64_t x : h.shape) dims += (dims.empty() ? "" : ", ") + std::to_string(x);
      return Status::InvalidArgument(".npy shape [" + dims + "] is absurdly large");
    }
    h.num_elements *= d;
  }
  h.data_offset = total;
  return h;
}

std::string NpyHeader::DTypeName() const { return DecodeNpyDescr(descr).name; }

namespace {

// The checks of the strict readers: refuses what LoadNpy and the importer cannot
// read, and data the file does not hold.
Result<NpyHeader> CheckReadable(RawNpyHeader raw, uint64_t file_size) {
  if (raw.data_offset > file_size) {
    return Status::InvalidArgument(".npy file is truncated inside its header");
  }
  // numpy refuses other keys too; the checkpoint readers merely ignore them.
  if (!raw.extra_keys.empty()) {
    return Status::InvalidArgument("malformed .npy header (unexpected key '" + raw.extra_keys[0] +
                                   "')");
  }
  if (raw.structured) {
    return Status::InvalidArgument("unsupported .npy dtype: a structured (record) array");
  }
  if (raw.dtype.is_object()) {
    return Status::InvalidArgument("unsupported .npy dtype '" + raw.descr +
                                   "' (pickled Python objects)");
  }
  if (raw.dtype.big_endian) {
    return Status::NotSupported("big-endian .npy data ('" + raw.descr + "') is not supported");
  }
  if (raw.dtype.item_size == 0) {
    return Status::InvalidArgument("unsupported .npy dtype '" + raw.descr + "'");
  }
  const uint64_t count = static_cast<uint64_t>(raw.num_elements);
  const uint64_t item_size = static_cast<uint64_t>(raw.dtype.item_size);
  if (count != 0 && item_size > std::numeric_limits<uint64_t>::max() / count) {
    return Status::InvalidArgument(".npy shape is absurdly large");
  }
  NpyHeader h;
  h.descr = std::move(raw.descr);
  h.kind = raw.dtype.kind;
  h.item_size = static_cast<int>(raw.dtype.item_size);
  h.fortran_order = raw.fortran_order;
  h.shape = std::move(raw.shape);
  h.data_offset = raw.data_offset;
  h.data_bytes = count * item_size;
  if (h.data_bytes > file_size - h.data_offset) {
    return Status::InvalidArgument(".npy file is truncated: header promises " +
                                   std::to_string(h.data_bytes) + " data bytes, file has " +
                                   std::to_string(file_size - h.data_offset));
  }
  return h;
}

// For a prefix that ParseNpyHeaderPrefix found too short.
Status TruncatedHeader(size_t prefix_size) {
  if (prefix_size < sizeof(kNpyMagic))
    return Status::InvalidArgument("not a .npy file (bad magic)");
  return Status::InvalidArgument(".npy file is truncated inside its header");
}

}  // namespace

Result<NpyHeader> ParseNpyHeader(std::span<const uint8_t> prefix, uint64_t file_size) {
  const std::string_view text(reinterpret_cast<const char*>(prefix.data()), prefix.size());
  size_t needed = 0;
  EMBSTORE_ASSIGN_OR_RETURN(RawNpyHeader raw, ParseNpyHeaderPrefix(text, &needed));
  if (needed != 0) return TruncatedHeader(prefix.size());
  return CheckReadable(std::move(raw), file_size);
}

Result<NpyHeader> ReadNpyHeader(const std::string& path) {
  EMBSTORE_ASSIGN_OR_RETURN(int fd, OpenForRead(path));
  ScopedFd closer(fd);
  EMBSTORE_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd, path));
  const std::string context = "'" + path + "'";
  std::string prefix;
  uint64_t want = kFirstRead;
  // At most three rounds: the preamble, then the header length it states.
  while (true) {
    prefix.resize(static_cast<size_t>(std::min<uint64_t>(size, want)));
    EMBSTORE_RETURN_IF_ERROR(PReadFull(fd, prefix.data(), prefix.size(), 0, path));
    size_t needed = 0;
    Result<RawNpyHeader> raw = ParseNpyHeaderPrefix(prefix, &needed);
    if (!raw.ok()) return raw.status().WithContext(context);
    if (needed == 0) {
      Result<NpyHeader> h = CheckReadable(std::move(raw).value(), size);
      if (!h.ok()) return h.status().WithContext(context);
      return h;
    }
    if (needed <= prefix.size() || prefix.size() == size) {
      return TruncatedHeader(prefix.size()).WithContext(context);
    }
    want = needed;
  }
}

Result<NpyArray> LoadNpy(const std::string& path, uint64_t max_bytes) {
  EMBSTORE_ASSIGN_OR_RETURN(NpyHeader h, ReadNpyHeader(path));
  if (h.data_bytes > max_bytes) {
    return Status::InvalidArgument("'" + path + "' holds " + std::to_string(h.data_bytes) +
                                   " bytes, more than the limit of " + std::to_string(max_bytes));
  }
  if (h.fortran_order && h.shape.size() > 1) {
    return Status::NotSupported("'" + path + "': Fortran-order arrays are not accepted here; " +
                                "save it with numpy.ascontiguousarray");
  }
  EMBSTORE_ASSIGN_OR_RETURN(int fd, OpenForRead(path));
  ScopedFd closer(fd);
  NpyArray a;
  EMBSTORE_ASSIGN_OR_RETURN(a.data, PageBuffer::Allocate(static_cast<size_t>(h.data_bytes)));
  EMBSTORE_RETURN_IF_ERROR(PReadFull(fd, a.data.data(), h.data_bytes, h.data_offset, path));
  a.header = std::move(h);
  return a;
}

Result<NpyArray> MapOrLoadNpy(const std::string& path, uint64_t max_bytes) {
  EMBSTORE_ASSIGN_OR_RETURN(NpyHeader h, ReadNpyHeader(path));
  constexpr uint64_t kMapFrom = uint64_t{1} << 20;
  if (h.data_bytes < kMapFrom || h.data_bytes > max_bytes || h.data_offset % 64 != 0 ||
      (h.fortran_order && h.shape.size() > 1)) {
    return LoadNpy(path, max_bytes);  // its checks and messages
  }
  EMBSTORE_ASSIGN_OR_RETURN(int fd, OpenForRead(path));
  ScopedFd closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return LoadNpy(path, max_bytes);
  // The header was read through another descriptor: the file opened now
  // must still hold the data it promised.
  if (static_cast<uint64_t>(st.st_size) < h.data_offset + h.data_bytes) {
    return Status::InvalidArgument("'" + path + "' is truncated: its header promises " +
                                   std::to_string(h.data_bytes) + " bytes of data");
  }
  NpyArray a;
  EMBSTORE_ASSIGN_OR_RETURN(
      a.data, PageBuffer::MapReadOnly(fd, h.data_offset, static_cast<size_t>(h.data_bytes)));
  a.header = std::move(h);
  return a;
}

// ---- Import reader ------------------------------------------------------------------

namespace {

class NpyTensorReader : public TensorReader {
 public:
  NpyTensorReader(std::string path, NpyHeader h, int fd, SourceDType dt, int64_t rows, int64_t dim)
      : path_(std::move(path)), h_(std::move(h)), fd_(fd), dtype_(dt), rows_(rows), dim_(dim) {}

  int64_t rows() const override { return rows_; }
  int64_t dim() const override { return dim_; }
  SourceDType source_dtype() const override { return dtype_; }
  std::string source() const override { return path_; }

  Status ReadRows(int64_t first, int64_t count, float* out) override {
    if (first < 0 || count < 0 || first + count > rows_) {
      return Status::Internal("NpyTensorReader::ReadRows out of range");
    }
    const uint64_t isz = static_cast<uint64_t>(h_.item_size);
    const uint64_t n = static_cast<uint64_t>(count) * static_cast<uint64_t>(dim_);
    buf_.resize(n * isz);
    if (!h_.fortran_order || dim_ == 1) {
      const uint64_t off = h_.data_offset + static_cast<uint64_t>(first) * dim_ * isz;
      EMBSTORE_RETURN_IF_ERROR(PReadFull(fd_.get(), buf_.data(), n * isz, off, path_));
      if (!Convert(buf_.data(), n, out, 1)) return ckpt::F64OverflowError(path_, first, count);
    } else {
      // Column-major: column j holds element (i, j) at j * rows + i.
      for (int64_t j = 0; j < dim_; ++j) {
        const uint64_t off =
            h_.data_offset +
            (static_cast<uint64_t>(j) * rows_ + static_cast<uint64_t>(first)) * isz;
        EMBSTORE_RETURN_IF_ERROR(PReadFull(fd_.get(), buf_.data(), count * isz, off, path_));
        if (!Convert(buf_.data(), static_cast<uint64_t>(count), out + j, dim_))
          return ckpt::F64OverflowError(path_, first, count);
      }
    }
    return Status::OK();
  }

 private:
  // False when a float64 value lies beyond float32 (see ckpt::ConvertToFloat).
  bool Convert(const uint8_t* src, uint64_t n, float* dst, int64_t dst_stride) const {
    return ckpt::ConvertToFloat(dtype_, src, static_cast<int64_t>(h_.item_size),
                                static_cast<int64_t>(n), dst, dst_stride);
  }

  std::string path_;
  NpyHeader h_;
  ScopedFd fd_;
  SourceDType dtype_;
  int64_t rows_;
  int64_t dim_;
  std::vector<uint8_t> buf_;
};

}  // namespace

Result<std::vector<TensorEntry>> InspectNpy(const std::string& path) {
  EMBSTORE_ASSIGN_OR_RETURN(NpyHeader h, ReadNpyHeader(path));
  return std::vector<TensorEntry>{TensorEntry{"", h.DTypeName(), h.shape}};
}

Result<std::unique_ptr<TensorReader>> OpenNpy(const std::string& path) {
  EMBSTORE_ASSIGN_OR_RETURN(NpyHeader h, ReadNpyHeader(path));
  SourceDType dt = SourceDType::kOther;
  if (h.kind == 'f' && h.item_size == 4) dt = SourceDType::kF32;
  if (h.kind == 'f' && h.item_size == 8) dt = SourceDType::kF64;
  if (h.kind == 'f' && h.item_size == 2) dt = SourceDType::kF16;
  if (dt == SourceDType::kOther) {
    return Status::InvalidArgument("'" + path + "' has dtype " + h.DTypeName() + " ('" + h.descr +
                                   "'); only floating arrays (f32, f64, f16) can be imported");
  }
  int64_t rows = 0, dim = 0;
  if (h.shape.size() == 1) {
    rows = h.shape[0];
    dim = 1;
  } else if (h.shape.size() == 2) {
    rows = h.shape[0];
    dim = h.shape[1];
  } else {
    return Status::InvalidArgument("'" + path + "' has " + std::to_string(h.shape.size()) +
                                   " dimensions; only 1-D (N x 1) and 2-D arrays can be imported");
  }
  if (dim == 0) return Status::InvalidArgument("'" + path + "' has rows of dimension 0");
  EMBSTORE_ASSIGN_OR_RETURN(int fd, OpenForRead(path));
  return std::unique_ptr<TensorReader>(
      std::make_unique<NpyTensorReader>(path, std::move(h), fd, dt, rows, dim));
}

}  // namespace embstore::storage
