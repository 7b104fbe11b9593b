// Error hierarchy of the collective library.
//
// Every failure is one of three kinds, and the Python bindings map each kind to
// one Python type so callers can tell them apart without parsing messages:
//
//   InvalidArgumentError  the caller asked for something unusable; nothing was
//                         sent and the communicator is still usable  -> ValueError
//   IoError               a peer went away, misbehaved or disagreed about which
//                         collective runs; the communicator is closed -> CollectiveError (OSError)
//   TimeoutError          nothing moved within the timeout            -> CollectiveTimeout
//                         (TimeoutError and CollectiveError)
//
// Messages name the operation, this rank and the peer involved, so a log line
// from any rank is enough to see which link failed.
#pragma once

#include <stdexcept>
#include <string>

namespace adaptrain::collective {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class InvalidArgumentError : public Error {
 public:
  using Error::Error;
};

class IoError : public Error {
 public:
  using Error::Error;
};

class TimeoutError : public IoError {
 public:
  using IoError::IoError;
};

// A Python signal handler raised (for example KeyboardInterrupt) while a call
// was blocked; the Python exception is already pending and is re-raised as is.
class InterruptedError : public Error {
 public:
  using Error::Error;
};

// strerror() that is safe to call from several threads.
std::string errno_text(int error_number);

}  // namespace adaptrain::collective
