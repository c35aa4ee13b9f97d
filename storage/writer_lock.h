// Internal: the store's writer lock, DIR/LOCK.
//
// One process at a time writes a store. The lock is an flock(2) on DIR/LOCK,
// which the kernel drops when its holder exits, however it exits (SIGKILL
// included): a crashed writer never leaves the store locked. The holder
// writes its pid into the file so that a waiting writer can name it.
// Readers never take this lock.
#ifndef EMBSTORE_STORAGE_WRITER_LOCK_H_
#define EMBSTORE_STORAGE_WRITER_LOCK_H_

#include <chrono>
#include <memory>
#include <string>

#include "embstore/status.h"

namespace embstore::storage {

inline constexpr char kLockFile[] = "LOCK";

class WriterLock {
 public:
  // Takes the lock of the store in `dir`, waiting up to `wait` for the
  // writer that holds it. On timeout: IOError "another process (pid N) is
  // writing to DIR". `dir` must exist.
  static Result<std::unique_ptr<WriterLock>> Acquire(const std::string& dir,
                                                     std::chrono::milliseconds wait);
  ~WriterLock();
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

 private:
  explicit WriterLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace embstore::storage

#endif  // EMBSTORE_STORAGE_WRITER_LOCK_H_
