// Small POSIX socket helpers shared by the TCP transport and the blob service.
//
// Everything here is a thin, checked wrapper: descriptor ownership, best-effort
// socket options, name resolution, printable addresses, and a listener that
// retries while a previous owner of the port is still letting it go.
#pragma once

#include <netdb.h>
#include <sys/socket.h>

#include <cstddef>
#include <string>
#include <utility>

#include "core/deadline.h"

namespace adaptrain::collective {

// Owns a file descriptor until released.
class Socket {
 public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&& other) noexcept {
    reset(std::exchange(other.fd_, -1));
    return *this;
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() { reset(); }

  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);

 private:
  int fd_;
};

// Best effort: a refused buffer size or NODELAY degrades speed, not correctness.
void set_int_option(int fd, int level, int name, int value);

// Buffer sizes must be set before connect()/listen() so that the TCP window
// scale negotiated in the SYN can use them; accepted sockets inherit them
// from the listener. 0 leaves the kernel's autotuning alone.
void set_buffer_sizes(int fd, size_t bytes);

struct AddrInfoList {
  addrinfo* head = nullptr;
  AddrInfoList() = default;
  AddrInfoList(const AddrInfoList&) = delete;
  AddrInfoList& operator=(const AddrInfoList&) = delete;
  ~AddrInfoList() {
    if (head != nullptr) freeaddrinfo(head);
  }
};

// Returns 0 or a getaddrinfo error code.
int resolve_address(const std::string& host, const std::string& port, bool passive,
                    AddrInfoList& out);

// "10.0.0.2:41000" or "[::1]:41000".
std::string text_of(const sockaddr_storage& addr);

// A non-blocking listening socket on host:port ("0" for an ephemeral port),
// with SO_REUSEADDR so that a new group can listen on the address of one that
// just closed (its connections may linger in TIME_WAIT). While the port is
// still held by another listener (EADDRINUSE: the previous cluster version's
// communicator has not closed yet) it retries until `deadline`. Throws IoError
// naming `who`.
Socket listen_on(const std::string& host, const std::string& port, size_t buffer_bytes,
                 const Deadline& deadline, const std::string& who);

// The port a bound socket ended up on.
int local_port(int fd);

}  // namespace adaptrain::collective
