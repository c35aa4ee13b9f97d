// NumPy .npy writing: WriteNpy and the streaming NpyWriter (format 1.0).
// Reading is in npy.cc.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "checkpoint/npy.h"
#include "util/io_util.h"

namespace embstore::storage {

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
  std::string out(reinterpret_cast<const char*>(kNpyMagic), 6);
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
    if (!tmp_path_.empty()) ::unlink(tmp_path_.c_str());
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
  const std::string header = MakeHeader(descr, shape);
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {  // follows symbolic links
    if (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode)) {
      // A device or a pipe (/dev/null, /dev/stdout): written straight
      // through; there is no file to replace atomically.
      tmp_path_.clear();
      fd_ = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
      if (fd_ < 0) return ErrnoStatus("cannot open", path, errno);
      return WriteFull(fd_, header.data(), header.size(), path);
    }
    if (S_ISDIR(st.st_mode)) return Status::InvalidArgument("'" + path + "' is a directory");
    if (!S_ISREG(st.st_mode)) {
      return Status::InvalidArgument("'" + path +
                                     "' is not a regular file, a character device or a pipe");
    }
    // A symbolic link to a file: the file it leads to is replaced, not the
    // link.
    char* real = ::realpath(path.c_str(), nullptr);
    if (real == nullptr) return ErrnoStatus("cannot resolve", path, errno);
    path_ = real;
    std::free(real);  // NOLINT(cppcoreguidelines-no-malloc): realpath's buffer
  } else if (errno == ELOOP) {
    return Status::InvalidArgument("'" + path + "' is a loop of symbolic links");
  } else if (struct stat lst{}; ::lstat(path.c_str(), &lst) == 0 && S_ISLNK(lst.st_mode)) {
    return Status::InvalidArgument("'" + path + "' is a symbolic link to a missing file");
  }
  // The temporary is created exclusively under a random name: a link planted
  // beside the output (in a shared directory) is never followed.
  EMBSTORE_ASSIGN_OR_RETURN(fd_, CreateTempBeside(path_, &tmp_path_));
  return WriteFull(fd_, header.data(), header.size(), tmp_path_);
}

Status NpyWriter::Append(std::span<const uint8_t> bytes) {
  if (fd_ < 0) return Status::Internal("NpyWriter::Append before Open");
  written_bytes_ += bytes.size();
  if (written_bytes_ > expected_bytes_)
    return Status::Internal("NpyWriter: more data than the shape");
  return WriteFull(fd_, bytes.data(), bytes.size(), tmp_path_.empty() ? path_ : tmp_path_);
}

Status NpyWriter::Commit() {
  if (fd_ < 0) return Status::Internal("NpyWriter::Commit before Open");
  if (written_bytes_ != expected_bytes_)
    return Status::Internal("NpyWriter: less data than the shape");
  if (tmp_path_.empty()) {  // a device or a pipe: nothing to sync or rename
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc == 0 ? Status::OK() : ErrnoStatus("cannot close", path_, errno);
  }
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

}  // namespace embstore::storage
