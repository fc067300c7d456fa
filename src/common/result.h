// Result<T>: a value or an Error, returned at every module boundary where
// failure comes from outside the program (files, processes, sockets, peers,
// user input). Invariants inside a module are asserted instead.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace vmgrid {

// Error codes double as the API's error codes (see api/errors.h for the
// mapping to HTTP status). Keep them few and meaningful to a caller.
enum class ErrorCode {
  kInvalidArgument,     // bad input: the caller must change the request
  kNotFound,            // no such object (or not visible to the caller)
  kAlreadyExists,       // name or id already taken
  kFailedPrecondition,  // object is in the wrong state for this operation
  kResourceExhausted,   // no capacity / quota
  kUnauthenticated,     // no or bad credential
  kPermissionDenied,    // credential valid but not allowed
  kUnavailable,         // peer (agent, controller, QEMU) unreachable: retry may help
  kTimeout,             // deadline passed
  kTooManyRequests,     // the caller has too much running: retry later
  kInternal,            // a bug or an environment failure the caller cannot fix
};

const char* ErrorCodeName(ErrorCode code);

struct Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  // With kTooManyRequests: the seconds after which a retry may succeed
  // (HTTP Retry-After; 0: 1 second).
  int retry_after_s = 0;

  // Returns a copy with "context: " prepended, for adding what the caller was
  // doing when a lower layer failed.
  Error Wrap(const std::string& context) const {
    return Error{code, context + ": " + message, retry_after_s};
  }
};

inline Error MakeError(ErrorCode code, std::string message) {
  return Error{code, std::move(message)};
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const {
    assert(!ok());
    return std::get<1>(v_);
  }

 private:
  std::variant<T, Error> v_;
};

// Result<void> equivalent.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT
  static Status Ok() { return Status(); }

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const {
    assert(!ok_);
    return error_;
  }

 private:
  Error error_;
  bool ok_ = true;
};

}  // namespace vmgrid

// Propagate an error from an expression returning Status or Result<T>.
#define VMG_RETURN_IF_ERROR(expr)              \
  do {                                         \
    auto _vmg_st = (expr);                     \
    if (!_vmg_st.ok()) return _vmg_st.error(); \
  } while (0)

#define VMG_CONCAT_INNER(a, b) a##b
#define VMG_CONCAT(a, b) VMG_CONCAT_INNER(a, b)
// Declare `lhs` from a Result<T> expression, or return its error.
#define VMG_ASSIGN_OR_RETURN(lhs, expr)                                                  \
  auto VMG_CONCAT(_vmg_r_, __LINE__) = (expr);                                           \
  if (!VMG_CONCAT(_vmg_r_, __LINE__).ok()) return VMG_CONCAT(_vmg_r_, __LINE__).error(); \
  lhs = std::move(VMG_CONCAT(_vmg_r_, __LINE__)).value()
