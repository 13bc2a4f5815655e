// pyagg engine — Status: the only way an error leaves the engine.
//
// Two error tiers (DESIGN.md): bad input -> a Status with a message naming the
// offending values; a broken internal invariant -> assert. No engine function
// throws across its boundary; no exit()/abort() on user input.
#pragma once

#include <string>
#include <utility>

namespace pyagg {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,  // bad input: shapes, bounds, parameters, dtypes
  kUnsupported = 2,      // valid request the build cannot serve (e.g. CUDA not compiled in)
  kDeviceError = 3,      // CUDA runtime failure, no device
  kOutOfMemory = 4,
  kIoError = 5,          // sockets (LossyMPI)
  kTimeout = 6,
  kInternal = 7,         // should not happen; reported instead of crashing
};

class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status Invalid(std::string m) { return Status(StatusCode::kInvalidArgument, std::move(m)); }
  static Status Unsupported(std::string m) { return Status(StatusCode::kUnsupported, std::move(m)); }
  static Status Device(std::string m) { return Status(StatusCode::kDeviceError, std::move(m)); }
  static Status OutOfMemory(std::string m) { return Status(StatusCode::kOutOfMemory, std::move(m)); }
  static Status Io(std::string m) { return Status(StatusCode::kIoError, std::move(m)); }
  static Status Timeout(std::string m) { return Status(StatusCode::kTimeout, std::move(m)); }
  static Status Internal(std::string m) { return Status(StatusCode::kInternal, std::move(m)); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  int code_int() const { return static_cast<int>(code_); }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

#define PYAGG_RETURN_IF_ERROR(expr)        \
  do {                                     \
    ::pyagg::Status _st = (expr);          \
    if (!_st.ok()) return _st;             \
  } while (0)

}  // namespace pyagg
