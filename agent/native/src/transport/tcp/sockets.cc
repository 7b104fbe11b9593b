#include "transport/tcp/sockets.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <thread>

#include "core/errors.h"

namespace adaptrain::collective {

void Socket::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

void set_int_option(int fd, int level, int name, int value) {
  (void)::setsockopt(fd, level, name, &value, sizeof(value));
}

void set_buffer_sizes(int fd, size_t bytes) {
  if (bytes == 0) return;
  int value = static_cast<int>(std::min<size_t>(bytes, 1u << 30));
  set_int_option(fd, SOL_SOCKET, SO_SNDBUF, value);
  set_int_option(fd, SOL_SOCKET, SO_RCVBUF, value);
}

int resolve_address(const std::string& host, const std::string& port, bool passive,
                    AddrInfoList& out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  return getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &out.head);
}

std::string text_of(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (addr.ss_family == AF_INET) {
    auto* in = reinterpret_cast<const sockaddr_in*>(&addr);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    return std::string(host) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (addr.ss_family == AF_INET6) {
    auto* in6 = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return "an unknown address";
}

Socket listen_on(const std::string& host, const std::string& port, size_t buffer_bytes,
                 const Deadline& deadline, const std::string& who) {
  const std::string address =
      (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + port;
  AddrInfoList resolved;
  int gai = resolve_address(host, port, true, resolved);
  if (gai != 0) {
    throw IoError(who + " cannot resolve its own listen address " + address + ": " +
                  gai_strerror(gai));
  }
  int pause_ms = 5;
  for (;;) {
    int last_errno = 0;
    for (addrinfo* ai = resolved.head; ai != nullptr; ai = ai->ai_next) {
      Socket socket(
          ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
      if (socket.get() < 0) {
        last_errno = errno;
        continue;
      }
      set_int_option(socket.get(), SOL_SOCKET, SO_REUSEADDR, 1);
      set_buffer_sizes(socket.get(), buffer_bytes);
      if (::bind(socket.get(), ai->ai_addr, ai->ai_addrlen) != 0 ||
          ::listen(socket.get(), 128) != 0) {
        last_errno = errno;
        continue;
      }
      return socket;
    }
    // Only "in use" is worth waiting for: the previous owner is about to let go.
    if (last_errno != EADDRINUSE || deadline.expired()) {
      throw IoError(who + " cannot listen on " + address + ": " + errno_text(last_errno) +
                    (last_errno == EADDRINUSE
                         ? " (still in use when the timeout ran out; is another process "
                           "or an unclosed communicator listening there?)"
                         : ""));
    }
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::min(pause_ms, std::max(deadline.remaining_ms(), 1))));
    pause_ms = std::min(pause_ms * 2, 100);
  }
}

int local_port(int fd) {
  sockaddr_storage addr{};
  socklen_t length = sizeof(addr);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length) != 0) {
    throw IoError("getsockname failed: " + errno_text(errno));
  }
  if (addr.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
  }
  if (addr.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
  }
  throw IoError("getsockname returned an unknown address family");
}

}  // namespace adaptrain::collective
