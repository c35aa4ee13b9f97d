#include "util/io_util.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <new>
#include <random>
#include <utility>

namespace embstore {

Status ErrnoStatus(const std::string& what, const std::string& path, int err) {
  std::string msg = what + " '" + path + "': " + std::strerror(err);
  if (err == ENOENT) return Status::NotFound(msg);
  return Status::IOError(msg);
}

Status PReadFull(int fd, void* buf, uint64_t n, uint64_t offset, const std::string& path) {
  auto* p = static_cast<uint8_t*>(buf);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot read", path, errno);
    }
    if (r == 0) {
      return Status::Corruption("'" + path + "' is truncated (needed " + std::to_string(n) +
                                " more bytes at offset " + std::to_string(offset) + ")");
    }
    p += r;
    n -= static_cast<uint64_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return Status::OK();
}

Status PWriteFull(int fd, const void* buf, uint64_t n, uint64_t offset, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(buf);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot write", path, errno);
    }
    p += w;
    n -= static_cast<uint64_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return Status::OK();
}

Status WriteFull(int fd, const void* buf, uint64_t n, const std::string& path) {
  const auto* p = static_cast<const uint8_t*>(buf);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot write", path, errno);
    }
    p += w;
    n -= static_cast<uint64_t>(w);
  }
  return Status::OK();
}

Status FsyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open directory", dir, errno);
  ScopedFd closer(fd);
  if (::fsync(fd) != 0) return ErrnoStatus("cannot fsync directory", dir, errno);
  return Status::OK();
}

Result<int> CreateTempBeside(const std::string& final_path, std::string* tmp_path) {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  for (int attempt = 0; attempt < 16; ++attempt) {
    const uint64_t r = (uint64_t{rd()} << 32) ^ rd() ^ counter.fetch_add(1);
    char suffix[24];
    std::snprintf(suffix, sizeof suffix, "%08" PRIx32, static_cast<uint32_t>(r ^ (r >> 32)));
    *tmp_path = final_path + ".tmp-" + std::to_string(::getpid()) + "-" + suffix;
    const int fd =
        ::open(tmp_path->c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) return fd;
    if (errno != EEXIST) return ErrnoStatus("cannot create", *tmp_path, errno);
  }
  return Status::IOError("cannot create a temporary file beside '" + final_path +
                         "': every name tried exists");
}

Result<uint64_t> FileSize(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus("cannot stat", path, errno);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument("'" + path + "' is not a regular file");
  return static_cast<uint64_t>(st.st_size);
}

Result<int> OpenForRead(const std::string& path) {
  // O_NONBLOCK: a named pipe planted at the path must not hang the open
  // (FileSize refuses what is not a regular file); no effect on files.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoStatus("cannot open", path, errno);
  return fd;
}

ScopedFd::~ScopedFd() {
  if (fd_ >= 0) ::close(fd_);
}

// ---- PageBuffer -----------------------------------------------------------------

namespace {
constexpr std::align_val_t kSmallAlign{64};
}  // namespace

Result<PageBuffer> PageBuffer::Allocate(size_t bytes) {
  PageBuffer b;
  if (bytes == 0) return b;
  if (bytes < kPageBufferMapBytes) {
    b.data_ = static_cast<uint8_t*>(::operator new(bytes, kSmallAlign, std::nothrow));
    if (b.data_ == nullptr) {
      return Status::IOError("cannot allocate " + std::to_string(bytes) + " bytes");
    }
    b.size_ = bytes;
    return b;
  }
  // A whole number of huge pages: the kernel then places the mapping on a
  // huge-page boundary.
  const size_t mapped =
      (bytes + kPageBufferMapBytes - 1) / kPageBufferMapBytes * kPageBufferMapBytes;
  if (mapped < bytes) return Status::IOError("cannot allocate " + std::to_string(bytes) + " bytes");
  void* p = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return Status::IOError("cannot allocate " + std::to_string(bytes) +
                           " bytes: " + std::strerror(errno));
  }
  // Advice only: where transparent huge pages are off this is a no-op.
  (void)::madvise(p, mapped, MADV_HUGEPAGE);
  b.data_ = static_cast<uint8_t*>(p);
  b.base_ = b.data_;
  b.size_ = bytes;
  b.mapped_bytes_ = mapped;
  return b;
}

Result<PageBuffer> PageBuffer::MapReadOnly(int fd, uint64_t offset, size_t bytes) {
  PageBuffer b;
  if (bytes == 0) return b;
  const long page = ::sysconf(_SC_PAGESIZE);
  const uint64_t start = offset / static_cast<uint64_t>(page) * static_cast<uint64_t>(page);
  const size_t length = static_cast<size_t>(offset - start) + bytes;
  void* p = ::mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(start));
  if (p == MAP_FAILED) {
    return Status::IOError("cannot map " + std::to_string(bytes) +
                           " bytes of a file: " + std::strerror(errno));
  }
  b.base_ = static_cast<uint8_t*>(p);
  b.data_ = b.base_ + (offset - start);
  b.size_ = bytes;
  b.mapped_bytes_ = length;
  return b;
}

void PageBuffer::Release() {
  if (data_ == nullptr) return;
  if (mapped_bytes_ > 0) {
    ::munmap(base_, mapped_bytes_);
  } else {
    ::operator delete(data_, kSmallAlign);
  }
  data_ = nullptr;
  base_ = nullptr;
  size_ = 0;
  mapped_bytes_ = 0;
}

PageBuffer::~PageBuffer() { Release(); }

PageBuffer::PageBuffer(PageBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      mapped_bytes_(std::exchange(other.mapped_bytes_, 0)),
      base_(std::exchange(other.base_, nullptr)) {}

PageBuffer& PageBuffer::operator=(PageBuffer&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    mapped_bytes_ = std::exchange(other.mapped_bytes_, 0);
    base_ = std::exchange(other.base_, nullptr);
  }
  return *this;
}

}  // namespace embstore
