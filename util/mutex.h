// An annotated mutex, its scoped lock and a condition variable over it, so
// that clang's -Wthread-safety checks every GUARDED_BY member (see
// util/thread_annotations.h). Thin wrappers over std::mutex and
// std::condition_variable_any; no behaviour of their own.
#pragma once

#include <cassert>
#include <chrono>
#include <condition_variable>
#include <mutex>

#include "util/thread_annotations.h"

namespace embstore {

class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() UNLOCK_FUNCTION() { mu_.unlock(); }
  bool TryLock() EXCLUSIVE_TRYLOCK_FUNCTION(true) { return mu_.try_lock(); }
  // Tells the analysis that the caller holds this mutex (no run-time check).
  void AssertHeld() const ASSERT_EXCLUSIVE_LOCK() {}

  // BasicLockable, for std::condition_variable_any (CondVar below).
  void lock() EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void unlock() UNLOCK_FUNCTION() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

// Holds `mu` from construction to destruction.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex* mu) EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// A condition variable used with a held Mutex. REQUIRES: the caller holds mu.
class CondVar {
 public:
  explicit CondVar(Mutex* mu) : mu_(mu) {}
  void Wait() EXCLUSIVE_LOCKS_REQUIRED(mu_) { cv_.wait(*mu_); }
  // The same, naming the mutex: clang cannot tell that this CondVar's mu_ is
  // the caller's mutex, so a caller whose mutex is GUARDED_BY-checked waits
  // with Wait(&mu), which the analysis checks. REQUIRES: mu is the mutex
  // this CondVar was made with.
  void Wait(Mutex* mu) EXCLUSIVE_LOCKS_REQUIRED(mu) {
    assert(mu == mu_);
    cv_.wait(*mu);
  }
  // Returns false on timeout.
  template <class Rep, class Period>
  bool WaitFor(std::chrono::duration<Rep, Period> d) EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return cv_.wait_for(*mu_, d) == std::cv_status::no_timeout;
  }
  // WaitFor naming the mutex, as Wait(Mutex*). REQUIRES: mu is this
  // CondVar's mutex.
  template <class Rep, class Period>
  bool WaitFor(Mutex* mu, std::chrono::duration<Rep, Period> d) EXCLUSIVE_LOCKS_REQUIRED(mu) {
    assert(mu == mu_);
    return cv_.wait_for(*mu, d) == std::cv_status::no_timeout;
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable_any cv_;
  Mutex* const mu_;
};

}  // namespace embstore
