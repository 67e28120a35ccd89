// Status and Result: how atomdisk reports what the world can cause.
//
// Errors are values: a bad tag, EIO, a timeout, a corrupt sector come back as a Status
// (or a Result<T> holding one). What only a bug can cause is an ATOMDISK_CHECK that aborts.
// Both types are plain values, safe to copy and move between threads.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace atomdisk {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // a caller's or a user's input is wrong (bad flag, bad config value)
  kNotFound,         // a file or an entry does not exist
  kCorruption,       // stored or received bytes fail a checksum or a format check
  kIOError,          // the OS failed a read, write or sync
  kTimeout,          // a deadline passed before the operation finished
  kUnavailable,      // not enough nodes reachable, a connection closed
  kAuthFailure,      // an HMAC tag did not verify
  kBusy,             // a resource is held by someone else (a data_dir lock)
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string m) {
    return {StatusCode::kInvalidArgument, std::move(m)};
  }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status Corruption(std::string m) { return {StatusCode::kCorruption, std::move(m)}; }
  static Status IOError(std::string m) { return {StatusCode::kIOError, std::move(m)}; }
  static Status Timeout(std::string m) { return {StatusCode::kTimeout, std::move(m)}; }
  static Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
  static Status AuthFailure(std::string m) { return {StatusCode::kAuthFailure, std::move(m)}; }
  static Status Busy(std::string m) { return {StatusCode::kBusy, std::move(m)}; }
  // An IOError whose message ends with strerror(err).
  static Status FromErrno(const std::string& context, int err);

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "Corruption: sector 12: checksum mismatch", or "OK".
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Always-on assertion for conditions only a bug can violate.
[[noreturn]] void CheckFailed(const char* file, int line, const char* expr);
#define ATOMDISK_CHECK(cond) ((cond) ? (void)0 : ::atomdisk::CheckFailed(__FILE__, __LINE__, #cond))

// A value or the Status that explains why there is none. Never holds an OK status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    ATOMDISK_CHECK(!std::get<Status>(v_).ok());
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & {
    ATOMDISK_CHECK(ok());
    return std::get<T>(v_);
  }
  const T& value() const& {
    ATOMDISK_CHECK(ok());
    return std::get<T>(v_);
  }
  T&& value() && {
    ATOMDISK_CHECK(ok());
    return std::get<T>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace atomdisk
