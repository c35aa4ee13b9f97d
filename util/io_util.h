// Internal: small POSIX file helpers that turn errno into Status messages,
// and PageBuffer, an owned byte buffer backed by pages.
#ifndef EMBSTORE_UTIL_IO_UTIL_H_
#define EMBSTORE_UTIL_IO_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "embstore/status.h"

namespace embstore {

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

// Creates a new file to be renamed onto `final_path` later, named
// "<final_path>.tmp-<pid>-<random>", for writing, exclusively
// (O_CREAT|O_EXCL|O_NOFOLLOW): a file or a link planted at that name is
// never opened, let alone followed. Returns the descriptor; *tmp_path is set.
Result<int> CreateTempBeside(const std::string& final_path, std::string* tmp_path);

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

// An owned, uninitialised byte buffer for large arrays: query inputs read
// from .npy files and pooled outputs. Allocation touches no page: from
// kPageBufferMapBytes on, the buffer is an anonymous mapping advised
// MADV_HUGEPAGE, so filling it (read(), a pooling pass) costs a few
// huge-page faults, not a zeroing pass plus one fault per 4 KiB page (which
// std::vector<T>(n) costs: measured 15 % of a 5M-lookup `embstore query`).
// Smaller buffers come from operator new. data() is 64-byte aligned.
inline constexpr size_t kPageBufferMapBytes = size_t{2} << 20;
class PageBuffer {
 public:
  PageBuffer() = default;
  // IOError when the memory cannot be had.
  static Result<PageBuffer> Allocate(size_t bytes);
  // `bytes` bytes of the file `fd` from `offset`, mapped read-only and shared
  // (the page cache's pages: no copy, no fresh memory). READ ONLY: data() must
  // not be written through. A read past the end of a file truncated later
  // raises SIGBUS (see cli::EnableMappedInputs). IOError if it cannot be mapped.
  static Result<PageBuffer> MapReadOnly(int fd, uint64_t offset, size_t bytes);
  ~PageBuffer();
  PageBuffer(PageBuffer&& other) noexcept;
  PageBuffer& operator=(PageBuffer&& other) noexcept;
  PageBuffer(const PageBuffer&) = delete;
  PageBuffer& operator=(const PageBuffer&) = delete;

  uint8_t* data() { return data_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  uint8_t& operator[](size_t i) { return data_[i]; }
  const uint8_t& operator[](size_t i) const { return data_[i]; }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }

 private:
  void Release();
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  size_t mapped_bytes_ = 0;  // > 0: base_ is a mapping of this length
  uint8_t* base_ = nullptr;  // the mapping's start (data_ or before it)
};

}  // namespace embstore

#endif  // EMBSTORE_UTIL_IO_UTIL_H_
