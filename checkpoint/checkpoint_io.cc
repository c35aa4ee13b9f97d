// Shared pieces of the checkpoint readers: dtype conversion, files and byte
// sources, and the strided row reader every format hands out.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>

#include "checkpoint/checkpoint_internal.h"
#include "codec/half.h"

namespace embstore::storage::ckpt {
namespace {

template <typename T>
T LoadLE(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  if constexpr (std::endian::native == std::endian::big) {
    auto* b = reinterpret_cast<uint8_t*>(&v);
    std::reverse(b, b + sizeof(T));
  }
  return v;
}

std::string ErrnoText() { return std::strerror(errno); }

// Checked a * b + c for non-negative operands; false on overflow.
bool MulAdd(int64_t a, int64_t b, int64_t c, int64_t* out) {
  __int128 v = static_cast<__int128>(a) * b + c;
  if (v > std::numeric_limits<int64_t>::max()) return false;
  *out = static_cast<int64_t>(v);
  return true;
}

}  // namespace

// ---- dtypes -------------------------------------------------------------------

int64_t ElementSize(SourceDType dtype) {
  switch (dtype) {
    case SourceDType::kF32:
      return 4;
    case SourceDType::kF64:
      return 8;
    case SourceDType::kF16:
    case SourceDType::kBF16:
      return 2;
    case SourceDType::kOther:
      return 0;
  }
  return 0;
}

const char* SourceDTypeName(SourceDType dtype) {
  switch (dtype) {
    case SourceDType::kF32:
      return "f32";
    case SourceDType::kF64:
      return "f64";
    case SourceDType::kF16:
      return "f16";
    case SourceDType::kBF16:
      return "bf16";
    case SourceDType::kOther:
      return "other";
  }
  return "other";
}

SourceDType SourceDTypeFromName(std::string_view name) {
  if (name == "f32") return SourceDType::kF32;
  if (name == "f64") return SourceDType::kF64;
  if (name == "f16") return SourceDType::kF16;
  if (name == "bf16") return SourceDType::kBF16;
  return SourceDType::kOther;
}

Status F64OverflowError(const std::string& source, int64_t first, int64_t count) {
  return Status::InvalidArgument(
      source + ": rows [" + std::to_string(first) + ", " + std::to_string(first + count) +
      ") hold a float64 value beyond the float32 range (|x| > 3.4028235e38), which would become "
      "inf");
}

bool ConvertToFloat(SourceDType dtype, const uint8_t* src, int64_t src_stride_bytes, int64_t count,
                    float* dst, int64_t dst_stride) {
  switch (dtype) {
    case SourceDType::kF32:
      if (src_stride_bytes == 4 && dst_stride == 1 && std::endian::native == std::endian::little) {
        std::memcpy(dst, src, static_cast<size_t>(count) * 4);
        return true;
      }
      for (int64_t i = 0; i < count; ++i)
        dst[i * dst_stride] = LoadLE<float>(src + i * src_stride_bytes);
      return true;
    case SourceDType::kF64: {
      bool in_range = true;
      for (int64_t i = 0; i < count; ++i) {
        const double d = LoadLE<double>(src + i * src_stride_bytes);
        const float f = static_cast<float>(d);
        in_range &= !(std::isinf(f) && std::isfinite(d));
        dst[i * dst_stride] = f;
      }
      return in_range;
    }
    case SourceDType::kF16:
      for (int64_t i = 0; i < count; ++i) {
        dst[i * dst_stride] = codec::HalfToFloat(LoadLE<uint16_t>(src + i * src_stride_bytes));
      }
      return true;
    case SourceDType::kBF16:
      for (int64_t i = 0; i < count; ++i) {
        dst[i * dst_stride] = codec::BF16ToFloat(LoadLE<uint16_t>(src + i * src_stride_bytes));
      }
      return true;
    case SourceDType::kOther:
      assert(false);
      return true;
  }
  return true;
}

// ---- shapes -------------------------------------------------------------------

std::optional<int64_t> NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || !MulAdd(n, d, 0, &n)) return std::nullopt;
  }
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Status CheckImportable(const TensorEntry& entry, int64_t* rows, int64_t* dim) {
  const std::string name =
      entry.key.empty() ? std::string("the tensor") : "tensor '" + entry.key + "'";
  if (SourceDTypeFromName(entry.dtype) == SourceDType::kOther) {
    return Status::NotSupported(name + " has dtype " + entry.dtype +
                                "; only floating tensors (f32, f64, f16, bf16) can be imported");
  }
  if (entry.shape.empty()) {
    return Status::InvalidArgument(name +
                                   " is a 0-dimensional scalar; only 1-D and 2-D tensors "
                                   "can be imported as a table");
  }
  if (entry.shape.size() > 2) {
    return Status::InvalidArgument(name + " has shape " + ShapeString(entry.shape) +
                                   "; only 1-D (N -> N x 1) and 2-D tensors can be imported "
                                   "(reshape it to rows x dim first)");
  }
  if (!NumElements(entry.shape)) {
    return Status::Corruption(name + " has an invalid shape " + ShapeString(entry.shape));
  }
  if (entry.shape.size() == 2 && entry.shape[1] == 0) {
    return Status::InvalidArgument(name + " has shape " + ShapeString(entry.shape) +
                                   ": rows of dimension 0");
  }
  *rows = entry.shape[0];
  *dim = entry.shape.size() == 2 ? entry.shape[1] : 1;
  return Status::OK();
}

// ---- files ----------------------------------------------------------------------

File::~File() {
  if (fd_ >= 0) ::close(fd_);
}

Result<std::shared_ptr<File>> File::Open(const std::string& path) {
  int fd;
  do {
    // O_NONBLOCK: opening a named pipe must not wait for a writer (it is
    // refused below); it changes nothing for a regular file.
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno == ENOENT) return Status::NotFound("no such file '" + path + "'");
    return Status::IOError("cannot open '" + path + "': " + ErrnoText());
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    Status s = Status::IOError("cannot stat '" + path + "': " + ErrnoText());
    ::close(fd);
    return s;
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return Status::InvalidArgument("'" + path + "' is a directory, not a checkpoint file");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status::InvalidArgument(
        "'" + path +
        "' is a pipe or a device, not a regular file: checkpoints are read with "
        "random access (their index is at the end); save it to a file first");
  }
  return std::shared_ptr<File>(new File(fd, path, static_cast<uint64_t>(st.st_size)));
}

Result<std::shared_ptr<File>> File::CreateTemp() {
  std::error_code ec;
  std::filesystem::path dir = std::filesystem::temp_directory_path(ec);
  if (ec) dir = "/tmp";
  std::string name = (dir / "embstore-ckpt-XXXXXX").string();
  int fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0)
    return Status::IOError("cannot create a temporary file in " + dir.string() + ": " +
                           ErrnoText());
  ::unlink(name.c_str());
  return std::shared_ptr<File>(new File(fd, name + " (deleted)", 0));
}

Status File::ReadAt(uint64_t offset, void* buf, size_t n) const {
  auto* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    if (offset > static_cast<uint64_t>(std::numeric_limits<off_t>::max())) {
      return Status::Corruption("'" + path_ + "': read offset out of range");
    }
    const size_t chunk = std::min<size_t>(n, size_t{1} << 30);
    ssize_t got = ::pread(fd_, p, chunk, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      return Status::IOError("cannot read '" + path_ + "': " + ErrnoText());
    }
    if (got == 0) {
      return Status::Corruption("'" + path_ + "' ended early (truncated?) at byte " +
                                std::to_string(offset));
    }
    p += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return Status::OK();
}

Status File::Append(const void* buf, size_t n) {
  const auto* p = static_cast<const uint8_t*>(buf);
  while (n > 0) {
    ssize_t put = ::pwrite(fd_, p, n, static_cast<off_t>(size_));
    if (put < 0) {
      if (errno == EINTR) continue;
      return Status::IOError("cannot write the temporary file " + path_ + ": " + ErrnoText());
    }
    p += put;
    n -= static_cast<size_t>(put);
    size_ += static_cast<uint64_t>(put);
  }
  return Status::OK();
}

namespace {

class FileRegionSource final : public ByteSource {
 public:
  FileRegionSource(std::shared_ptr<File> file, uint64_t base, uint64_t size)
      : file_(std::move(file)), base_(base), size_(size) {}
  uint64_t size() const override { return size_; }
  Status ReadAt(uint64_t offset, void* buf, size_t n) override {
    if (offset > size_ || n > size_ - offset) {
      return Status::Internal("read past the end of a tensor region");
    }
    return file_->ReadAt(base_ + offset, buf, n);
  }
  bool random_access() const override { return true; }

 private:
  std::shared_ptr<File> file_;
  uint64_t base_;
  uint64_t size_;
};

}  // namespace

std::unique_ptr<ByteSource> MakeFileRegionSource(std::shared_ptr<File> file, uint64_t base,
                                                 uint64_t size) {
  return std::make_unique<FileRegionSource>(std::move(file), base, size);
}

Result<std::unique_ptr<ByteSource>> SpillToTempFile(ByteSource& source) {
  EMBSTORE_ASSIGN_OR_RETURN(std::shared_ptr<File> temp, File::CreateTemp());
  std::vector<uint8_t> buf(std::min<uint64_t>(source.size(), uint64_t{1} << 20));
  for (uint64_t off = 0; off < source.size();) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), source.size() - off));
    EMBSTORE_RETURN_IF_ERROR(source.ReadAt(off, buf.data(), n));
    EMBSTORE_RETURN_IF_ERROR(temp->Append(buf.data(), n));
    off += n;
  }
  const uint64_t size = temp->size();
  return MakeFileRegionSource(std::move(temp), 0, size);
}

// ---- strided reader -----------------------------------------------------------------

Status ValidateLayout(const TensorLayout& l, uint64_t available_bytes, const std::string& what) {
  const int64_t e = ElementSize(l.dtype);
  if (e == 0) return Status::Internal(what + ": layout of a non-floating dtype");
  if (l.rows < 0 || l.dim < 0 || l.offset < 0 || l.row_stride < 0 || l.col_stride < 0) {
    return Status::Corruption(what + ": negative size, offset or stride");
  }
  if (l.rows == 0 || l.dim == 0) return Status::OK();
  // Highest element index touched, then its end in bytes, with 128-bit arithmetic
  // (each product is below 2^126, so the sum of the three cannot overflow).
  const __int128 row_span = static_cast<__int128>(l.rows - 1) * l.row_stride;
  const __int128 col_span = static_cast<__int128>(l.dim - 1) * l.col_stride;
  if (row_span > std::numeric_limits<int64_t>::max() ||
      col_span > std::numeric_limits<int64_t>::max()) {
    return Status::Corruption(what + ": strides reach beyond any file");
  }
  const __int128 last = static_cast<__int128>(l.offset) + row_span + col_span;
  const __int128 end_bytes = (last + 1) * e;
  if (end_bytes > static_cast<__int128>(available_bytes) ||
      end_bytes > static_cast<__int128>(std::numeric_limits<int64_t>::max())) {
    return Status::Corruption(
        what + ": elements reach byte " +
        (end_bytes > static_cast<__int128>(std::numeric_limits<int64_t>::max())
             ? std::string("(overflow)")
             : std::to_string(static_cast<int64_t>(end_bytes))) +
        " but the data holds only " + std::to_string(available_bytes) + " bytes");
  }
  // rows * dim floats must be addressable by the caller.
  int64_t total;
  if (!MulAdd(l.rows, l.dim, 0, &total)) return Status::Corruption(what + ": too many elements");
  return Status::OK();
}

StridedTensorReader::StridedTensorReader(std::string source_name, const TensorLayout& layout,
                                         std::unique_ptr<ByteSource> source, size_t window_bytes)
    : source_name_(std::move(source_name)), layout_(layout), source_(std::move(source)) {
  const int64_t e = ElementSize(layout_.dtype);
  window_cap_ = std::max<size_t>(static_cast<size_t>(e), window_bytes / e * e);
  // Strides of a degenerate dimension never matter; normalising them lets the
  // contiguous fast paths apply.
  if (layout_.dim == 1) layout_.col_stride = 1;
  if (layout_.rows == 1) layout_.row_stride = layout_.dim * layout_.col_stride;
  const int64_t rs = layout_.row_stride, cs = layout_.col_stride;
  forward_friendly_ = layout_.dim == 1 ? rs >= 1 : (cs >= 1 && rs >= (layout_.dim - 1) * cs + 1);
}

Status StridedTensorReader::Ensure(uint64_t offset, uint64_t need, uint64_t hint_end) {
  if (offset >= window_begin_ && offset + need <= window_end_) return Status::OK();
  uint64_t len =
      std::max(need, std::min<uint64_t>(hint_end > offset ? hint_end - offset : 0, window_cap_));
  len = std::min<uint64_t>(len, source_->size() - offset);
  if (window_.size() < len) window_.resize(len);
  window_begin_ = window_end_ = offset;
  EMBSTORE_RETURN_IF_ERROR(source_->ReadAt(offset, window_.data(), len));
  window_end_ = offset + len;
  return Status::OK();
}

Status StridedTensorReader::ReadRows(int64_t first, int64_t count, float* out) {
  const TensorLayout& l = layout_;
  if (first < 0 || count < 0 || first > l.rows || count > l.rows - first) {
    return Status::InvalidArgument(source_name_ + ": rows [" + std::to_string(first) + ", +" +
                                   std::to_string(count) + ") out of range (" +
                                   std::to_string(l.rows) + " rows)");
  }
  if (count == 0 || l.dim == 0) return Status::OK();
  if (!source_->random_access() && !forward_friendly_) {
    // A column-major (or otherwise scattered) view of a compressed member: one
    // pass into a temp file beats re-decompressing the member per chunk.
    EMBSTORE_ASSIGN_OR_RETURN(source_, SpillToTempFile(*source_));
    window_begin_ = window_end_ = 0;
  }
  const int64_t e = ElementSize(l.dtype);
  const int64_t rs = l.row_stride, cs = l.col_stride;
  // Walk the dimension with the smaller stride innermost; a sequential source is
  // always walked row-major (forward_friendly_ guarantees increasing offsets).
  const bool row_major = cs <= rs || !source_->random_access();
  int64_t n_inner, n_outer, s_inner, s_outer, out_inner, out_outer;
  if (row_major) {
    n_inner = l.dim, n_outer = count, s_inner = cs, s_outer = rs, out_inner = 1, out_outer = l.dim;
    if (static_cast<__int128>(l.dim) * cs == rs) {  // rows tile: one run for the whole chunk
      n_inner = l.dim * count, n_outer = 1, s_outer = 0;
    }
  } else {
    n_inner = count, n_outer = l.dim, s_inner = rs, s_outer = cs, out_inner = l.dim, out_outer = 1;
  }
  // Gaps up to this many bytes are read through rather than skipped with a new read.
  constexpr int64_t kGapBytes = 4096;
  const int64_t base = l.offset + first * rs;
  if (n_outer == 1 && s_inner == 1 && out_inner == 1 && l.dtype == SourceDType::kF32 &&
      source_->random_access() && std::endian::native == std::endian::little) {
    // Contiguous float32 rows (the common case): straight into the caller's buffer.
    return source_->ReadAt(static_cast<uint64_t>(base) * 4, out, static_cast<size_t>(n_inner) * 4);
  }
  const int64_t run_span = ((n_inner - 1) * s_inner + 1) * e;
  const bool dense_run = s_inner == 0 || (s_inner - 1) * e <= kGapBytes;
  const bool runs_coalesce =
      dense_run && s_outer * e >= run_span && s_outer * e - run_span <= kGapBytes;
  const uint64_t last_end =
      static_cast<uint64_t>((base + (n_outer - 1) * s_outer + (n_inner - 1) * s_inner + 1) * e);
  for (int64_t j = 0; j < n_outer; ++j) {
    const int64_t run_start = base + j * s_outer;
    const uint64_t run_end = static_cast<uint64_t>((run_start + (n_inner - 1) * s_inner + 1) * e);
    float* run_out = out + j * out_outer;
    for (int64_t i = 0; i < n_inner;) {
      const uint64_t x = static_cast<uint64_t>((run_start + i * s_inner) * e);
      const uint64_t hint = runs_coalesce ? last_end : dense_run ? run_end : x + e;
      EMBSTORE_RETURN_IF_ERROR(Ensure(x, static_cast<uint64_t>(e), hint));
      int64_t k = n_inner - i;
      if (s_inner != 0) {
        k = std::min<int64_t>(k, static_cast<int64_t>((window_end_ - x - e) / (s_inner * e)) + 1);
      }
      if (!ConvertToFloat(l.dtype, window_.data() + (x - window_begin_), s_inner * e, k,
                          run_out + i * out_inner, out_inner)) {
        return F64OverflowError(source_name_, first, count);
      }
      i += k;
    }
  }
  return Status::OK();
}

Result<double> ReadElement(ByteSource& source, const std::string& dtype, int64_t index) {
  struct Kind {
    const char* name;
    int64_t size;
  };
  static constexpr Kind kKinds[] = {{"f32", 4},   {"f64", 8},   {"f16", 2},    {"bf16", 2},
                                    {"int64", 8}, {"int32", 4}, {"int16", 2},  {"int8", 1},
                                    {"uint8", 1}, {"bool", 1},  {"uint16", 2}, {"uint32", 4},
                                    {"uint64", 8}};
  int64_t e = 0;
  for (const Kind& k : kKinds) {
    if (dtype == k.name) e = k.size;
  }
  if (e == 0)
    return Status::NotSupported("a scalar of dtype " + dtype + " cannot be read as a number");
  if (index < 0 || static_cast<__int128>(index + 1) * e > static_cast<__int128>(source.size())) {
    return Status::Corruption("scalar lies outside its data");
  }
  uint8_t b[8];
  EMBSTORE_RETURN_IF_ERROR(
      source.ReadAt(static_cast<uint64_t>(index * e), b, static_cast<size_t>(e)));
  if (dtype == "f64") return LoadLE<double>(b);
  if (dtype == "int64") return static_cast<double>(LoadLE<int64_t>(b));
  if (dtype == "uint64") return static_cast<double>(LoadLE<uint64_t>(b));
  if (dtype == "int32") return static_cast<double>(LoadLE<int32_t>(b));
  if (dtype == "uint32") return static_cast<double>(LoadLE<uint32_t>(b));
  if (dtype == "int16") return static_cast<double>(LoadLE<int16_t>(b));
  if (dtype == "uint16") return static_cast<double>(LoadLE<uint16_t>(b));
  if (dtype == "int8") return static_cast<double>(static_cast<int8_t>(b[0]));
  if (dtype == "uint8") return static_cast<double>(b[0]);
  if (dtype == "bool") return b[0] != 0 ? 1.0 : 0.0;
  float f;
  ConvertToFloat(SourceDTypeFromName(dtype), b, e, 1, &f, 1);
  return static_cast<double>(f);
}

}  // namespace embstore::storage::ckpt
