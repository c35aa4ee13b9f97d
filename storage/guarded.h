// Exception barrier for the public API: no exception crosses it.
#ifndef EMBSTORE_STORAGE_GUARDED_H_
#define EMBSTORE_STORAGE_GUARDED_H_

#include <exception>
#include <new>
#include <string>

#include "embstore/status.h"

namespace embstore::storage {

// Runs `fn` (returning Status or Result<T>), turning any exception into an
// Internal status.
template <typename R, typename Fn>
R Guarded(Fn&& fn) {
  try {
    return fn();
  } catch (const std::bad_alloc&) {
    return R(Status::Internal("out of memory"));
  } catch (const std::exception& e) {
    return R(Status::Internal(std::string("unexpected error: ") + e.what()));
  } catch (...) {
    return R(Status::Internal("unexpected error"));
  }
}

}  // namespace embstore::storage

#endif  // EMBSTORE_STORAGE_GUARDED_H_
