#include "storage/writer_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <thread>

#include "util/io_util.h"

namespace embstore::storage {

namespace {

// The pid the holder wrote, or "?" while it has not written it yet.
std::string HolderPid(int fd) {
  char buf[32] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  std::string pid;
  for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; ++i) pid += buf[i];
  return pid.empty() ? "?" : pid;
}

}  // namespace

Result<std::unique_ptr<WriterLock>> WriterLock::Acquire(const std::string& dir,
                                                        std::chrono::milliseconds wait) {
  const std::string path = dir + "/" + kLockFile;
  const auto deadline = std::chrono::steady_clock::now() + wait;
  auto pause = std::chrono::milliseconds(1);
  int locked = -1;
  while (true) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("cannot open the writer lock", path, errno);
    ScopedFd candidate(fd);
    int rc;
    while ((rc = ::flock(fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR) {
    }
    if (rc == 0) {
      // The lock is on this inode only if LOCK is still this inode (a LOCK
      // removed and made again meanwhile would let two writers in).
      struct stat held {
      }, now{};
      if (::fstat(fd, &held) == 0 && ::stat(path.c_str(), &now) == 0 && held.st_dev == now.st_dev &&
          held.st_ino == now.st_ino) {
        locked = candidate.release();
        break;
      }
      continue;
    }
    if (errno != EWOULDBLOCK) return ErrnoStatus("cannot lock", path, errno);
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status::IOError("another process (pid " + HolderPid(fd) + ") is writing to " + dir +
                             " (waited " + std::to_string(wait.count()) + " ms)");
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
  ScopedFd closer(locked);
  const int fd = locked;
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    // The pid is only for messages; the lock itself is held.
  }
  return std::unique_ptr<WriterLock>(new WriterLock(closer.release()));
}

WriterLock::~WriterLock() {
  // Closing the descriptor drops the flock; the pid is left for no one to
  // read (a waiter reads it only while the lock is held).
  ::close(fd_);
}

}  // namespace embstore::storage
