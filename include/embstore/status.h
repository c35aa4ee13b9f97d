// Status and Result: the one error style at embstore's library boundaries.
//
// Exceptions never cross the public API. Every fallible call returns a Status
// (or a Result<T> carrying either a value or a non-OK Status) whose message is
// meant to be shown to a person as is.
//
// Thread-safety: Status and Result are values; distinct objects may be used
// from different threads freely.
#ifndef EMBSTORE_STATUS_H_
#define EMBSTORE_STATUS_H_

#include <cassert>
#include <optional>
#include <string>
#include <utility>

namespace embstore {

class [[nodiscard]] Status {
 public:
  // Persisted nowhere; used for exit codes and programmatic checks.
  enum class Code {
    kOk = 0,
    kInvalidArgument,  // bad request, bad flag, bad input file contents
    kNotFound,         // unknown table, missing tensor key, missing file
    kAlreadyExists,    // table exists and no replace was asked for
    kNotSupported,     // valid but unsupported (e.g. no GPU, integer tensor)
    kIOError,          // the operating system refused a read/write/sync
    kCorruption,       // a checksum or structural check of our own files failed
    kInternal,         // a bug; please report
  };

  Status() = default;
  static Status OK() { return Status(); }
  static Status InvalidArgument(std::string msg) {
    return Status(Code::kInvalidArgument, std::move(msg));
  }
  static Status NotFound(std::string msg) { return Status(Code::kNotFound, std::move(msg)); }
  static Status AlreadyExists(std::string msg) {
    return Status(Code::kAlreadyExists, std::move(msg));
  }
  static Status NotSupported(std::string msg) {
    return Status(Code::kNotSupported, std::move(msg));
  }
  static Status IOError(std::string msg) { return Status(Code::kIOError, std::move(msg)); }
  static Status Corruption(std::string msg) { return Status(Code::kCorruption, std::move(msg)); }
  static Status Internal(std::string msg) { return Status(Code::kInternal, std::move(msg)); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "OK" or "<code name>: <message>".
  std::string ToString() const {
    return ok() ? std::string("OK") : std::string(CodeName(code_)) + ": " + message_;
  }
  static const char* CodeName(Code code) {
    switch (code) {
      case Code::kOk:
        return "OK";
      case Code::kInvalidArgument:
        return "Invalid argument";
      case Code::kNotFound:
        return "Not found";
      case Code::kAlreadyExists:
        return "Already exists";
      case Code::kNotSupported:
        return "Not supported";
      case Code::kIOError:
        return "I/O error";
      case Code::kCorruption:
        return "Corruption";
      case Code::kInternal:
        return "Internal error";
    }
    return "Unknown";
  }

  // Returns a copy whose message is "<prefix>: <message>" (no-op when OK).
  Status WithContext(const std::string& prefix) const {
    return ok() ? *this : Status(code_, prefix + ": " + message_);
  }

 private:
  Status(Code code, std::string msg) : code_(code), message_(std::move(msg)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

// Either a T or a non-OK Status. Accessing value() of an error is a bug (asserts).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status)
      : status_(ErrorOnly(std::move(status))) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & {
    assert(ok());
    return *value_;
  }
  const T& value() const& {
    assert(ok());
    return *value_;
  }
  T&& value() && {
    assert(ok());
    return std::move(*value_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  static Status ErrorOnly(Status status) {
    assert(!status.ok());
    if (status.ok()) return Status::Internal("Result constructed from an OK status");
    return status;
  }
  Status status_;
  std::optional<T> value_;
};

}  // namespace embstore

// Internal convenience: return early on error.
#define EMBSTORE_RETURN_IF_ERROR(expr) \
  do {                                 \
    ::embstore::Status _st = (expr);   \
    if (!_st.ok()) return _st;         \
  } while (0)

#define EMBSTORE_CONCAT_INNER_(a, b) a##b
#define EMBSTORE_CONCAT_(a, b) EMBSTORE_CONCAT_INNER_(a, b)
#define EMBSTORE_ASSIGN_OR_RETURN(lhs, expr) \
  EMBSTORE_ASSIGN_OR_RETURN_IMPL_(EMBSTORE_CONCAT_(_res_, __LINE__), lhs, expr)
#define EMBSTORE_ASSIGN_OR_RETURN_IMPL_(res, lhs, expr) \
  auto res = (expr);                                    \
  if (!res.ok()) return res.status();                   \
  lhs = std::move(res).value()

#endif  // EMBSTORE_STATUS_H_
