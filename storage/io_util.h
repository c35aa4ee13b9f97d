// Internal: small POSIX file helpers that turn errno into Status messages.
#ifndef EMBSTORE_STORAGE_IO_UTIL_H_
#define EMBSTORE_STORAGE_IO_UTIL_H_

#include <cstdint>
#include <string>

#include "embstore/status.h"

namespace embstore::storage {

// "<what> '<path>': <strerror(errno)>" as an IOError (NotFound for ENOENT).
Status ErrnoStatus(const std::string& what, const std::string& path, int err);

// Reads exactly n bytes at offset; a short read is Corruption ("truncated").
Status PReadFull(int fd, void* buf, uint64_t n, uint64_t offset, const std::string& path);
// Writes exactly n bytes at offset.
Status PWriteFull(int fd, const void* buf, uint64_t n, uint64_t offset, const std::string& path);
Status WriteFull(int fd, const void* buf, uint64_t n, const std::string& path);
// fsync of a directory, so that a rename inside it is durable.
Status FsyncDir(const std::string& dir);
// Size of an open file.
Result<uint64_t> FileSize(int fd, const std::string& path);
// Opens for reading; NotFound / IOError with the path in the message.
Result<int> OpenForRead(const std::string& path);

// Closes the descriptor on scope exit.
class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ~ScopedFd();
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_;
};

}  // namespace embstore::storage

#endif  // EMBSTORE_STORAGE_IO_UTIL_H_
