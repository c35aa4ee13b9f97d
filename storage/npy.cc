#include "storage/npy.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <limits>
#include <memory>

#include "storage/half.h"
#include "storage/io_util.h"
#include "storage/tensor_reader.h"

namespace embstore::storage {
namespace {

constexpr uint8_t kMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
constexpr uint64_t kMaxHeaderLen = 1u << 20;  // numpy itself writes < 64 KiB

// A tiny parser for the Python dict literal in a .npy header.
class DictParser {
 public:
  explicit DictParser(std::string_view s) : s_(s) {}

  Status Parse(NpyHeader* out) {
    bool have_descr = false, have_order = false, have_shape = false;
    Skip();
    if (!Eat('{')) return Err("expected '{'");
    while (true) {
      Skip();
      if (Eat('}')) break;
      std::string key;
      EMBSTORE_RETURN_IF_ERROR(ParseString(&key));
      Skip();
      if (!Eat(':')) return Err("expected ':' after key '" + key + "'");
      Skip();
      if (key == "descr") {
        EMBSTORE_RETURN_IF_ERROR(ParseString(&out->descr));
        have_descr = true;
      } else if (key == "fortran_order") {
        if (Word("True")) {
          out->fortran_order = true;
        } else if (Word("False")) {
          out->fortran_order = false;
        } else {
          return Err("fortran_order must be True or False");
        }
        have_order = true;
      } else if (key == "shape") {
        EMBSTORE_RETURN_IF_ERROR(ParseShape(&out->shape));
        have_shape = true;
      } else {
        return Err("unexpected key '" + key + "'");
      }
      Skip();
      if (Eat(',')) continue;
      Skip();
      if (Eat('}')) break;
      return Err("expected ',' or '}'");
    }
    if (!have_descr || !have_order || !have_shape) {
      return Err("header lacks one of 'descr', 'fortran_order', 'shape'");
    }
    return Status::OK();
  }

 private:
  Status Err(const std::string& what) const {
    return Status::InvalidArgument("malformed .npy header (" + what + " at character " +
                                   std::to_string(pos_) + ")");
  }
  void Skip() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool Eat(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool Word(std::string_view w) {
    if (s_.substr(pos_, w.size()) == w) {
      pos_ += w.size();
      return true;
    }
    return false;
  }
  Status ParseString(std::string* out) {
    if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) return Err("expected a string");
    const char q = s_[pos_++];
    size_t end = s_.find(q, pos_);
    if (end == std::string_view::npos || end - pos_ > 64) return Err("unterminated string");
    *out = std::string(s_.substr(pos_, end - pos_));
    pos_ = end + 1;
    return Status::OK();
  }
  Status ParseShape(std::vector<int64_t>* shape) {
    if (!Eat('(')) return Err("shape must be a tuple");
    while (true) {
      Skip();
      if (Eat(')')) break;
      if (shape->size() >= 32) return Err("too many dimensions");
      size_t start = pos_;
      int64_t v = 0;
      while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
        if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) return Err("dimension too large");
        v = v * 10 + (s_[pos_] - '0');
        ++pos_;
      }
      if (pos_ == start) return Err("expected a non-negative integer dimension");
      // numpy may write Python 2 longs as "3L".
      Eat('L');
      shape->push_back(v);
      Skip();
      if (Eat(',')) continue;
      Skip();
      if (Eat(')')) break;
      return Err("expected ',' or ')' in shape");
    }
    return Status::OK();
  }

  std::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

std::string NpyHeader::DTypeName() const {
  if (kind == 'f' && item_size == 4) return "f32";
  if (kind == 'f' && item_size == 8) return "f64";
  if (kind == 'f' && item_size == 2) return "f16";
  if (kind == 'i') return "int" + std::to_string(item_size * 8);
  if (kind == 'u') return "uint" + std::to_string(item_size * 8);
  if (kind == 'b') return "bool";
  return descr;
}

Result<NpyHeader> ParseNpyHeader(std::span<const uint8_t> prefix, uint64_t file_size) {
  if (prefix.size() < 10 || std::memcmp(prefix.data(), kMagic, 6) != 0) {
    return Status::InvalidArgument("not a .npy file (bad magic)");
  }
  const uint8_t major = prefix[6];
  uint64_t header_len = 0;
  uint64_t preamble = 0;
  if (major == 1) {
    header_len = prefix[8] | (static_cast<uint64_t>(prefix[9]) << 8);
    preamble = 10;
  } else if (major == 2 || major == 3) {
    if (prefix.size() < 12) return Status::InvalidArgument("truncated .npy header");
    header_len = prefix[8] | (static_cast<uint64_t>(prefix[9]) << 8) |
                 (static_cast<uint64_t>(prefix[10]) << 16) |
                 (static_cast<uint64_t>(prefix[11]) << 24);
    preamble = 12;
  } else {
    return Status::InvalidArgument("unsupported .npy format version " + std::to_string(major));
  }
  if (header_len > kMaxHeaderLen) {
    return Status::InvalidArgument("absurd .npy header length " + std::to_string(header_len));
  }
  if (preamble + header_len > file_size || preamble + header_len > prefix.size()) {
    return Status::InvalidArgument(".npy file is truncated inside its header");
  }
  NpyHeader h;
  std::string_view text(reinterpret_cast<const char*>(prefix.data() + preamble), header_len);
  EMBSTORE_RETURN_IF_ERROR(DictParser(text).Parse(&h));
  if (h.descr.size() < 3) return Status::InvalidArgument("malformed .npy dtype '" + h.descr + "'");
  const char order = h.descr[0];
  h.kind = h.descr[1];
  int size = 0;
  for (size_t i = 2; i < h.descr.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(h.descr[i])) || size > 1000) {
      return Status::InvalidArgument("unsupported .npy dtype '" + h.descr + "'");
    }
    size = size * 10 + (h.descr[i] - '0');
  }
  if (size <= 0) return Status::InvalidArgument("unsupported .npy dtype '" + h.descr + "'");
  h.item_size = size;
  if (order == '>' && size > 1) {
    return Status::NotSupported("big-endian .npy data ('" + h.descr + "') is not supported");
  }
  if (order != '<' && order != '|' && order != '=' && order != '>') {
    return Status::InvalidArgument("unsupported .npy dtype '" + h.descr + "'");
  }
  uint64_t count = 1;
  for (int64_t d : h.shape) {
    if (d != 0 && count > std::numeric_limits<uint64_t>::max() / 16 / static_cast<uint64_t>(d)) {
      return Status::InvalidArgument(".npy shape is absurdly large");
    }
    count *= static_cast<uint64_t>(d);
  }
  h.data_offset = preamble + header_len;
  h.data_bytes = count * static_cast<uint64_t>(size);
  if (h.data_offset + h.data_bytes > file_size) {
    return Status::InvalidArgument(".npy file is truncated: header promises " +
                                   std::to_string(h.data_bytes) + " data bytes, file has " +
                                   std::to_string(file_size - h.data_offset));
  }
  return h;
}

Result<NpyHeader> ReadNpyHeader(const std::string& path) {
  EMBSTORE_ASSIGN_OR_RETURN(int fd, OpenForRead(path));
  ScopedFd closer(fd);
  EMBSTORE_ASSIGN_OR_RETURN(uint64_t size, FileSize(fd, path));
  std::vector<uint8_t> prefix(std::min<uint64_t>(size, 12));
  EMBSTORE_RETURN_IF_ERROR(PReadFull(fd, prefix.data(), prefix.size(), 0, path));
  if (prefix.size() < 10 || std::memcmp(prefix.data(), kMagic, 6) != 0) {
    return Status::InvalidArgument("'" + path + "' is not a .npy file (bad magic)");
  }
  // Read as much as the header claims, bounded by kMaxHeaderLen.
  uint64_t want = std::min<uint64_t>(size, 12 + kMaxHeaderLen);
  if (prefix[6] == 1) {
    want = std::min<uint64_t>(size, 10 + (prefix[8] | (static_cast<uint64_t>(prefix[9]) << 8)));
  } else if (prefix.size() >= 12) {
    uint64_t len = prefix[8] | (static_cast<uint64_t>(prefix[9]) << 8) |
                   (static_cast<uint64_t>(prefix[10]) << 16) |
                   (static_cast<uint64_t>(prefix[11]) << 24);
    want = std::min<uint64_t>(size, 12 + std::min<uint64_t>(len, kMaxHeaderLen + 1));
  }
  prefix.resize(want);
  EMBSTORE_RETURN_IF_ERROR(PReadFull(fd, prefix.data(), prefix.size(), 0, path));
  auto h = ParseNpyHeader(prefix, size);
  if (!h.ok()) return h.status().WithContext("'" + path + "'");
  return h;
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
  a.data.resize(h.data_bytes);
  EMBSTORE_RETURN_IF_ERROR(PReadFull(fd, a.data.data(), h.data_bytes, h.data_offset, path));
  a.header = std::move(h);
  return a;
}

// ---- Writing ------------------------------------------------------------------

namespace {

std::string MakeHeader(const std::string& descr, const std::vector<int64_t>& shape) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) {
    dict += std::to_string(shape[i]);
    if (shape.size() == 1 || i + 1 < shape.size()) dict += ",";
    if (i + 1 < shape.size()) dict += " ";
  }
  dict += "), }";
  // Version 1.0: magic(6) version(2) len(2) dict, padded with spaces to a
  // multiple of 64 and ended by '\n'.
  size_t total = 10 + dict.size() + 1;
  size_t padded = (total + 63) / 64 * 64;
  dict.append(padded - total, ' ');
  dict += '\n';
  std::string out(reinterpret_cast<const char*>(kMagic), 6);
  out += '\x01';
  out += '\x00';
  uint16_t len = static_cast<uint16_t>(dict.size());
  out += static_cast<char>(len & 0xff);
  out += static_cast<char>(len >> 8);
  return out + dict;
}

int DescrSize(const std::string& descr) {
  if (descr == "<f4" || descr == "<i4") return 4;
  if (descr == "<f8" || descr == "<i8") return 8;
  if (descr == "<f2") return 2;
  return 0;
}

}  // namespace

NpyWriter::~NpyWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_path_.c_str());
  }
}

Status NpyWriter::Open(const std::string& path, const std::string& descr,
                       const std::vector<int64_t>& shape) {
  const int size = DescrSize(descr);
  if (size == 0) return Status::Internal("NpyWriter: unsupported descr " + descr);
  uint64_t count = 1;
  for (int64_t d : shape) count *= static_cast<uint64_t>(d);
  expected_bytes_ = count * static_cast<uint64_t>(size);
  path_ = path;
  tmp_path_ = path + ".tmp-" + std::to_string(::getpid());
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) return ErrnoStatus("cannot create", tmp_path_, errno);
  const std::string header = MakeHeader(descr, shape);
  return WriteFull(fd_, header.data(), header.size(), tmp_path_);
}

Status NpyWriter::Append(std::span<const uint8_t> bytes) {
  if (fd_ < 0) return Status::Internal("NpyWriter::Append before Open");
  written_bytes_ += bytes.size();
  if (written_bytes_ > expected_bytes_)
    return Status::Internal("NpyWriter: more data than the shape");
  return WriteFull(fd_, bytes.data(), bytes.size(), tmp_path_);
}

Status NpyWriter::Commit() {
  if (fd_ < 0) return Status::Internal("NpyWriter::Commit before Open");
  if (written_bytes_ != expected_bytes_)
    return Status::Internal("NpyWriter: less data than the shape");
  if (::fsync(fd_) != 0) return ErrnoStatus("cannot fsync", tmp_path_, errno);
  if (::close(fd_) != 0) {
    fd_ = -1;
    ::unlink(tmp_path_.c_str());
    return ErrnoStatus("cannot close", tmp_path_, errno);
  }
  fd_ = -1;
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    Status st = ErrnoStatus("cannot rename onto", path_, errno);
    ::unlink(tmp_path_.c_str());
    return st;
  }
  return Status::OK();
}

Status WriteNpy(const std::string& path, const std::string& descr,
                const std::vector<int64_t>& shape, std::span<const uint8_t> data) {
  NpyWriter w;
  EMBSTORE_RETURN_IF_ERROR(w.Open(path, descr, shape));
  EMBSTORE_RETURN_IF_ERROR(w.Append(data));
  return w.Commit();
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
      Convert(buf_.data(), n, out, 1);
    } else {
      // Column-major: column j holds element (i, j) at j * rows + i.
      for (int64_t j = 0; j < dim_; ++j) {
        const uint64_t off =
            h_.data_offset +
            (static_cast<uint64_t>(j) * rows_ + static_cast<uint64_t>(first)) * isz;
        EMBSTORE_RETURN_IF_ERROR(PReadFull(fd_.get(), buf_.data(), count * isz, off, path_));
        Convert(buf_.data(), static_cast<uint64_t>(count), out + j, dim_);
      }
    }
    return Status::OK();
  }

 private:
  void Convert(const uint8_t* src, uint64_t n, float* dst, int64_t dst_stride) const {
    switch (dtype_) {
      case SourceDType::kF32:
        for (uint64_t i = 0; i < n; ++i) std::memcpy(&dst[i * dst_stride], src + 4 * i, 4);
        break;
      case SourceDType::kF64:
        for (uint64_t i = 0; i < n; ++i) {
          double d;
          std::memcpy(&d, src + 8 * i, 8);
          dst[i * dst_stride] = static_cast<float>(d);
        }
        break;
      case SourceDType::kF16:
        for (uint64_t i = 0; i < n; ++i) {
          uint16_t v;
          std::memcpy(&v, src + 2 * i, 2);
          dst[i * dst_stride] = HalfToFloat(v);
        }
        break;
      default:
        break;
    }
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
