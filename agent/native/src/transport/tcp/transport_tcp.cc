#include "transport/tcp/transport_tcp.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "core/errors.h"
#include "transport/tcp/sockets.h"

namespace adaptrain::collective {

namespace {

// A spin-wait hint: lets the sibling hyperthread run and saves power.
inline void pause_briefly() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

// ---------------------------------------------------------------------------
// Handshake messages. Both ends run the same build on the same kind of host,
// so they are sent as native-endian structs; the version field is what a
// future wire change would bump.

namespace {

constexpr uint32_t kHelloMagic = 0x4C4F4341;      // "ACOL" on the wire
constexpr uint32_t kChallengeMagic = 0x48434341;  // "ACCH"
// 2: the cluster version joined the hello; 3: challenge-response with the run's secret.
constexpr uint32_t kProtocolVersion = 3;
// How long an accepted connection may take, from its accept, to deliver its hello.
constexpr int kAcceptHandshakeMs = 2000;

// Sent by the accepting side as soon as it accepts.
struct Challenge {
  uint32_t magic;
  uint32_t version;
  uint32_t responder_rank;
  uint32_t world_size;
  uint64_t cluster_version;
  uint8_t nonce[kNonceBytes];
};

struct Hello {
  uint32_t magic;
  uint32_t version;
  uint32_t sender_rank;
  uint32_t receiver_rank;
  uint32_t world_size;
  uint32_t reserved;
  uint64_t group_id;
  uint64_t cluster_version;
  uint8_t nonce[kNonceBytes];
  uint8_t proof[32];
};

enum HelloStatus : uint32_t {
  kAccepted = 0,
  kBadMagic = 1,
  kVersionMismatch = 2,
  kSizeMismatch = 3,
  kGroupMismatch = 4,
  kWrongReceiver = 5,
  kUnexpectedSender = 6,
  kClusterVersionMismatch = 7,
  kNotAMember = 8,
};

struct HelloReply {
  uint32_t magic;
  uint32_t version;
  uint32_t status;
  uint32_t responder_rank;
  uint32_t world_size;
  uint32_t reserved;
  uint64_t cluster_version;
  uint8_t proof[32];  // the acceptor's, when accepted; zeros otherwise
};

const char* status_reason(uint32_t status) {
  switch (status) {
    case kBadMagic:
      return "it did not recognise the handshake";
    case kVersionMismatch:
      return "it runs a different protocol version";
    case kSizeMismatch:
      return "it belongs to a group of a different size";
    case kGroupMismatch:
      return "it was started with a different peer list";
    case kWrongReceiver:
      return "it is a different rank than the peer list says";
    case kUnexpectedSender:
      return "it did not expect a connection from this rank (duplicate rank?)";
    case kClusterVersionMismatch:
      return "it belongs to another cluster version";
    case kNotAMember:
      return "it could not verify the proof of membership (the two processes hold different "
             "fabric secrets: another job or another run of it)";
    default:
      return "unknown reason";
  }
}

}  // namespace

uint64_t hash_peers(const std::vector<std::string>& peers) {
  uint64_t hash = 1469598103934665603ull;
  for (const std::string& peer : peers) {
    for (unsigned char c : peer + '\n') {
      hash ^= c;
      hash *= 1099511628211ull;
    }
  }
  return hash;
}

// ---------------------------------------------------------------------------

HostPort parse_host_port(const std::string& address) {
  auto bad = [&](const char* why) {
    return InvalidArgumentError(
        "peer address \"" + address + "\" is not valid: " + why +
        " (expected \"host:port\", e.g. \"10.0.0.2:41000\" or \"[::1]:41000\")");
  };
  size_t colon = address.rfind(':');
  if (colon == std::string::npos) throw bad("no port");
  HostPort result{address.substr(0, colon), address.substr(colon + 1)};
  if (result.host.size() >= 2 && result.host.front() == '[' && result.host.back() == ']') {
    result.host = result.host.substr(1, result.host.size() - 2);
  } else if (result.host.find(':') != std::string::npos) {
    throw bad("an IPv6 host must be in brackets");
  }
  if (result.host.empty()) throw bad("no host");
  if (result.port.empty() || result.port.size() > 5 ||
      !std::all_of(result.port.begin(), result.port.end(),
                   [](char c) { return c >= '0' && c <= '9'; }) ||
      std::stoi(result.port) < 1 || std::stoi(result.port) > 65535) {
    throw bad("the port must be a number from 1 to 65535");
  }
  return result;
}

// ---------------------------------------------------------------------------

void TcpConnection::identify(int peer_rank, std::string peer_address) {
  peer_rank_ = peer_rank;
  peer_address_ = std::move(peer_address);
}

size_t TcpConnection::send_some(const void* data, size_t length) {
  check_open();
  for (;;) {
    // MSG_NOSIGNAL: a dead peer must become an exception, not SIGPIPE.
    ssize_t sent = ::send(fd_, data, length, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent >= 0) return static_cast<size_t>(sent);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    throw IoError("the connection to " + describe_peer() + " broke while sending: " +
                  errno_text(errno) + "; the peer has probably exited or failed");
  }
}

size_t TcpConnection::recv_some(void* data, size_t length) {
  check_open();
  if (length == 0) return 0;
  for (;;) {
    ssize_t received = ::recv(fd_, data, length, MSG_DONTWAIT);
    if (received > 0) return static_cast<size_t>(received);
    if (received == 0) {
      throw IoError(describe_peer() +
                    " closed the connection; it has probably exited or failed, or found that the "
                    "ranks' calls differ (see its error)");
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    throw IoError("the connection to " + describe_peer() + " broke while receiving: " +
                  errno_text(errno) + "; the peer has probably exited or failed");
  }
}

size_t TcpConnection::peek_some(void* data, size_t length, bool* closed) {
  *closed = false;
  if (fd_ < 0 || length == 0) {
    *closed = fd_ < 0;
    return 0;
  }
  for (;;) {
    ssize_t received = ::recv(fd_, data, length, MSG_PEEK | MSG_DONTWAIT);
    if (received > 0) return static_cast<size_t>(received);
    if (received < 0 && errno == EINTR) continue;
    if (received < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    *closed = true;
    return 0;
  }
}

void TcpConnection::close() {
  if (fd_ < 0) return;
  ::shutdown(fd_, SHUT_RDWR);
  ::close(fd_);
  fd_ = -1;
}

void TcpConnection::poll_target(bool send, bool recv, pollfd* target) const {
  *target = pollfd{fd_, static_cast<short>((send ? POLLOUT : 0) | (recv ? POLLIN : 0)), 0};
}

void TcpConnection::check_open() const {
  if (fd_ < 0) throw IoError("the connection to " + describe_peer() + " is closed");
}

// ---------------------------------------------------------------------------

TcpTransport::TcpTransport(TcpOptions options) : options_(std::move(options)) {}

TcpTransport::~TcpTransport() { shutdown(); }

std::unique_ptr<TcpTransport> TcpTransport::connect(const TcpOptions& options) {
  const int size = static_cast<int>(options.peers.size());
  if (size < 1) throw InvalidArgumentError("peers is empty: give one \"host:port\" per rank");
  if (options.rank < 0 || options.rank >= size) {
    throw InvalidArgumentError("rank " + std::to_string(options.rank) + " is out of range for " +
                               std::to_string(size) + " peers: use 0.." + std::to_string(size - 1));
  }
  for (const std::string& peer : options.peers) parse_host_port(peer);
  for (int peer : options.needed_peers) {
    if (peer < 0 || peer >= size || peer == options.rank) {
      throw InvalidArgumentError("needed peer " + std::to_string(peer) +
                                 " is not another rank of the group");
    }
  }
  std::unique_ptr<TcpTransport> transport(new TcpTransport(options));
  transport->rendezvous();
  return transport;
}

std::string TcpTransport::who() const {
  return "rank " + std::to_string(options_.rank) + " (" + options_.peers[options_.rank] + ")";
}

Connection& TcpTransport::connection(int peer) {
  auto found = connections_.find(peer);
  if (found == connections_.end()) {
    throw IoError(who() + " has no connection to rank " + std::to_string(peer));
  }
  return *found->second;
}

void TcpTransport::shutdown() {
  for (auto& [peer, connection] : connections_) connection->close();
}

int TcpTransport::poll_retrying(pollfd* fds, unsigned long count, const Deadline& deadline) {
  for (;;) {
    int ready = ::poll(fds, static_cast<nfds_t>(count), deadline.remaining_ms());
    if (ready >= 0) return ready;
    if (errno != EINTR) throw IoError(who() + ": poll failed: " + errno_text(errno));
    if (options_.interrupt_check) options_.interrupt_check();
  }
}

std::unique_ptr<Connection> TcpTransport::release_connection(int peer) {
  auto found = connections_.find(peer);
  if (found == connections_.end()) {
    throw IoError(who() + " has no connection to rank " + std::to_string(peer));
  }
  std::unique_ptr<Connection> connection = std::move(found->second);
  connections_.erase(found);
  return connection;
}

void TcpTransport::adopt_connection(int peer, std::unique_ptr<Connection> connection) {
  connections_[peer] = std::move(connection);
}

void TcpTransport::wait(const WaitRequest* requests, size_t count, const Deadline& deadline,
                        int spin_us) {
  // Ready without a system call (a shared-memory ring with bytes or room)?
  auto any_ready = [&] {
    for (size_t i = 0; i < count; ++i) {
      if (requests[i].connection->ready(requests[i].send, requests[i].recv)) return true;
    }
    return false;
  };
  if (any_ready()) return;
  // One pollfd per connection even when both directions are wanted (a
  // two-rank ring sends and receives on the same socket).
  std::vector<pollfd> fds;
  std::vector<Connection*> owners;
  fds.reserve(count);
  owners.reserve(count);
  bool memory_backed = false;
  for (size_t i = 0; i < count; ++i) {
    Connection* connection = requests[i].connection;
    pollfd target{};
    connection->poll_target(requests[i].send, requests[i].recv, &target);
    memory_backed = memory_backed || connection->memory_backed();
    auto same =
        std::find_if(fds.begin(), fds.end(), [&](const pollfd& p) { return p.fd == target.fd; });
    if (same != fds.end()) {
      same->events |= target.events;
    } else {
      fds.push_back(target);
      owners.push_back(connection);
    }
  }
  auto report = [&] {
    for (size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents & POLLNVAL) {
        throw IoError(who() + ": a connection was closed while in use");
      }
      if (fds[i].revents != 0) owners[i]->woke(fds[i].revents);
    }
  };
  // Spin briefly first (see Tunables::spin_us): rings are checked in memory
  // and sockets with a zero-timeout poll(), so a quick answer is seen
  // without a wake-up.
  if (spin_us > 0) {
    const auto spin_until = Deadline::Clock::now() + std::chrono::microseconds(spin_us);
    const bool all_in_memory =
        std::all_of(owners.begin(), owners.end(), [](Connection* c) { return c->memory_backed(); });
    for (unsigned round = 0; Deadline::Clock::now() < spin_until; ++round) {
      if (memory_backed && any_ready()) return;
      // Rings only: no system call per round; their sockets (doorbells,
      // end-of-stream) are looked at now and then.
      if (all_in_memory && round % 64 != 63) {
        // Every 16th round gives the core away: with more ranks than cores
        // the peer being waited for may need exactly this one.
        if (round % 16 == 15) {
          ::sched_yield();
        } else {
          pause_briefly();
        }
        continue;
      }
      int ready = ::poll(fds.data(), static_cast<nfds_t>(fds.size()), 0);
      if (ready > 0) {
        report();
        return;
      }
      if (ready < 0 && errno != EINTR) break;  // poll_retrying below reports it
      // Give the core away between polls: with more ranks than cores the
      // rank whose bytes we wait for may be queued behind this one (a spin
      // without it halved 4-rank TCP throughput on 2 cores); with a core to
      // spare the call returns at once.
      ::sched_yield();
    }
  }
  // Ask to be woken; a ring that became ready while arming needs no sleep.
  for (size_t i = 0; i < count; ++i) {
    if (!requests[i].connection->arm(requests[i].send, requests[i].recv)) return;
  }
  for (;;) {
    int ready = poll_retrying(fds.data(), fds.size(), deadline);
    if (ready > 0) {
      // POLLERR/POLLHUP are reported by the next send/recv with a precise
      // message; only a descriptor that is not open at all is an error here.
      report();
      return;
    }
    if (deadline.expired()) {
      std::string waiting;
      for (size_t i = 0; i < count; ++i) {
        if (!waiting.empty()) waiting += " and ";
        const char* what = requests[i].send && requests[i].recv ? "to exchange data with "
                           : requests[i].send                   ? "to send to "
                                                                : "to receive from ";
        waiting += what + requests[i].connection->describe_peer();
      }
      throw TimeoutError("nothing moved within the " + deadline.budget_text() +
                         " timeout while waiting " + waiting +
                         "; the peer may have stalled, died or not called the same collective");
    }
  }
}

// ---------------------------------------------------------------------------
// Rendezvous.

int TcpTransport::connect_with_retry(int peer, Deadline& deadline) {
  const std::string& address_text = options_.peers[peer];
  const HostPort address = parse_host_port(address_text);
  std::string last_error = "no attempt finished";
  int backoff_ms = 10;
  while (!deadline.expired()) {
    AddrInfoList resolved;
    int gai = resolve_address(address.host, address.port, false, resolved);
    if (gai != 0) {
      last_error = std::string("cannot resolve host: ") + gai_strerror(gai);
    } else {
      for (addrinfo* ai = resolved.head; ai != nullptr; ai = ai->ai_next) {
        Socket socket(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                               ai->ai_protocol));
        if (socket.get() < 0) {
          last_error = errno_text(errno);
          continue;
        }
        set_buffer_sizes(socket.get(), options_.socket_buffer_bytes);
        int error = 0;
        if (::connect(socket.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
          error = errno;
          if (error == EINPROGRESS || error == EINTR) {
            // Non-blocking connect: wait for the outcome, then read it.
            pollfd p{socket.get(), POLLOUT, 0};
            if (poll_retrying(&p, 1, deadline) == 0) {
              last_error = "connection attempt timed out";
              continue;
            }
            socklen_t length = sizeof(error);
            if (::getsockopt(socket.get(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
              error = errno;
            }
          }
        }
        if (error == 0) {
          set_int_option(socket.get(), IPPROTO_TCP, TCP_NODELAY, 1);
          return socket.release();
        }
        // Refused or unreachable: the peer is most likely still starting.
        last_error = errno_text(error);
      }
    }
    const Deadline retry_at = Deadline::absolute(std::chrono::milliseconds(backoff_ms));
    while (!retry_at.expired() && !deadline.expired()) accept_pending(retry_at, deadline);
    backoff_ms = std::min(backoff_ms * 2, options_.connect_retry_ms);
  }
  throw TimeoutError(who() + " could not connect to rank " + std::to_string(peer) + " at " +
                     address_text + " within the " + deadline.budget_text() +
                     " timeout (last error: " + last_error +
                     "); is that rank running and listening there?" + rejections_text());
}

std::string TcpTransport::rejections_text() const {
  std::string text;
  if (saw_other_cluster_version_) {
    text +=
        "; peers at another cluster version were seen (a member of an older or newer version is "
        "still running at an address of this version's list, or this rank's version is stale)";
  }
  for (const std::string& rejection : rejections_) text += "; " + rejection;
  return text;
}

void TcpTransport::refuse(const std::string& text) {
  log_fabric_event(who() + " " + text);
  note_rejection(text);
}

void TcpTransport::accept_pending(const Deadline& poll_until, Deadline& deadline, int also_fd) {
  // The listener and every half-done handshake, polled together: the first to
  // move is served, none waits behind another.
  std::vector<pollfd> fds;
  fds.push_back(pollfd{listener_, POLLIN, 0});
  int wait_ms = std::min(poll_until.remaining_ms(), deadline.remaining_ms());
  for (const Incoming& incoming : incoming_) {
    fds.push_back(pollfd{incoming.connection->fd(), POLLIN, 0});
    wait_ms = std::min(wait_ms, incoming.deadline.remaining_ms());
  }
  if (also_fd >= 0) fds.push_back(pollfd{also_fd, POLLIN, 0});
  const Deadline wait = Deadline::absolute(std::chrono::milliseconds(wait_ms));
  poll_retrying(fds.data(), fds.size(), wait);
  std::vector<Incoming> still;
  for (size_t i = 0; i < incoming_.size(); ++i) {
    Incoming& incoming = incoming_[i];
    const bool readable = fds[i + 1].revents != 0;
    if (readable && continue_handshake(incoming)) continue;
    if (!readable && incoming.deadline.expired()) {
      refuse("dropped a connection from " + incoming.connection->peer_address() +
             ": it sent no complete handshake within " + std::to_string(kAcceptHandshakeMs) +
             " ms");
      continue;
    }
    still.push_back(std::move(incoming));
  }
  incoming_ = std::move(still);
  if (fds[0].revents & POLLIN) accept_one();
}

void TcpTransport::accept_one() {
  sockaddr_storage remote{};
  socklen_t remote_length = sizeof(remote);
  int fd = ::accept4(listener_, reinterpret_cast<sockaddr*>(&remote), &remote_length,
                     SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) return;
    throw IoError(who() + " failed to accept a connection: " + errno_text(errno));
  }
  set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  const std::string remote_text = text_of(remote);
  Incoming incoming{std::make_unique<TcpConnection>(fd, -1, remote_text),
                    Deadline::absolute(std::chrono::milliseconds(kAcceptHandshakeMs)),
                    random_nonce16(), std::vector<uint8_t>(sizeof(Hello)), 0};
  Challenge challenge{kChallengeMagic,
                      kProtocolVersion,
                      static_cast<uint32_t>(options_.rank),
                      static_cast<uint32_t>(size()),
                      options_.cluster_version,
                      {}};
  std::memcpy(challenge.nonce, incoming.nonce.data(), kNonceBytes);
  // A fresh socket's buffer always takes these few bytes at once.
  try {
    if (incoming.connection->send_some(&challenge, sizeof(challenge)) != sizeof(challenge)) {
      refuse("dropped a connection from " + remote_text + ": it took no challenge");
      return;
    }
  } catch (const IoError&) {
    refuse("a connection from " + remote_text + " hung up during the handshake");
    return;
  }
  incoming_.push_back(std::move(incoming));
}

bool TcpTransport::continue_handshake(Incoming& incoming) {
  try {
    incoming.received += incoming.connection->recv_some(incoming.hello.data() + incoming.received,
                                                        incoming.hello.size() - incoming.received);
  } catch (const IoError&) {
    refuse("a connection from " + incoming.connection->peer_address() +
           " hung up during the handshake");
    return true;
  }
  if (incoming.received < incoming.hello.size()) return false;
  finish_handshake(incoming);
  return true;
}

void TcpTransport::finish_handshake(Incoming& incoming) {
  const std::string remote_text = incoming.connection->peer_address();
  Hello hello{};
  std::memcpy(&hello, incoming.hello.data(), sizeof(hello));
  const int size = this->size();
  HandshakeContext context;
  context.channel = "collective";
  context.acceptor_nonce = incoming.nonce;
  std::memcpy(context.initiator_nonce.data(), hello.nonce, kNonceBytes);
  context.group_id = group_id_;
  context.cluster_version = options_.cluster_version;
  context.initiator_rank = hello.sender_rank;
  context.acceptor_rank = static_cast<uint32_t>(options_.rank);
  context.world_size = static_cast<uint32_t>(size);

  uint32_t status = kAccepted;
  if (hello.magic != kHelloMagic) {
    status = kBadMagic;
  } else if (hello.version != kProtocolVersion) {
    status = kVersionMismatch;
  } else if (hello.cluster_version != options_.cluster_version) {
    // First: a member of another version has another peer list and size too,
    // and those differences say nothing useful.
    status = kClusterVersionMismatch;
    saw_other_cluster_version_ = true;
  } else if (hello.world_size != static_cast<uint32_t>(size)) {
    status = kSizeMismatch;
  } else if (hello.group_id != group_id_) {
    status = kGroupMismatch;
  } else if (hello.receiver_rank != static_cast<uint32_t>(options_.rank)) {
    status = kWrongReceiver;
  } else {
    Digest claimed{};
    std::memcpy(claimed.data(), hello.proof, claimed.size());
    const Digest expected = handshake_proof(options_.secret, HandshakeRole::kInitiator, context);
    if (!digests_equal(claimed, expected)) {
      status = kNotAMember;
    } else if (std::find(expected_.begin(), expected_.end(), static_cast<int>(hello.sender_rank)) ==
               expected_.end()) {
      status = kUnexpectedSender;
    }
  }

  HelloReply reply{kHelloMagic,
                   kProtocolVersion,
                   status,
                   static_cast<uint32_t>(options_.rank),
                   static_cast<uint32_t>(size),
                   0,
                   options_.cluster_version,
                   {}};
  if (status == kAccepted) {
    const Digest proof = handshake_proof(options_.secret, HandshakeRole::kAcceptor, context);
    std::memcpy(reply.proof, proof.data(), proof.size());
  }
  try {
    // Bounded by the connection's own handshake deadline, never the group's.
    send_all(*this, *incoming.connection, &reply, sizeof(reply), incoming.deadline);
  } catch (const Error&) {
    refuse("a connection from " + remote_text + " hung up during the handshake");
    return;
  }
  if (status != kAccepted) {
    std::string claimed = hello.magic == kHelloMagic
                              ? " claiming to be rank " + std::to_string(hello.sender_rank) +
                                    " of " + std::to_string(hello.world_size)
                              : "";
    if (status == kClusterVersionMismatch) {
      claimed += " at cluster version " + std::to_string(hello.cluster_version) +
                 " (this rank is at " + std::to_string(options_.cluster_version) + ")";
    }
    refuse("refused a connection from " + remote_text + claimed + " because " +
           status_reason(status));
    return;
  }
  const int sender = static_cast<int>(hello.sender_rank);
  incoming.connection->identify(sender, options_.peers[sender]);
  connections_[sender] = std::move(incoming.connection);
  expected_.erase(std::find(expected_.begin(), expected_.end(), sender));
}

TcpTransport::Outgoing TcpTransport::open_with_hello(int peer, Deadline& deadline) {
  int fd = connect_with_retry(peer, deadline);
  Outgoing outgoing{std::make_unique<TcpConnection>(fd, peer, options_.peers[peer]), {}, {}};
  TcpConnection& connection = *outgoing.connection;
  Challenge challenge{};
  try {
    // Lower ranks' handshakes are served meanwhile: the peer may be waiting for
    // a challenge of ours before it gets to sending us its own.
    size_t have = 0;
    for (;;) {
      have += connection.recv_some(reinterpret_cast<char*>(&challenge) + have,
                                   sizeof(challenge) - have);
      if (have == sizeof(challenge)) break;
      if (deadline.expired()) {
        throw TimeoutError(who() + ": " + connection.describe_peer() +
                           " accepted the connection but sent no challenge within the " +
                           deadline.budget_text() + " timeout" + rejections_text());
      }
      accept_pending(deadline, deadline, connection.fd());
    }
  } catch (const TimeoutError&) {
    throw;
  } catch (const IoError&) {
    throw IoError(who() + ": " + connection.describe_peer() + " hung up during the handshake; " +
                  "is the process at that address a member of this group (of this version "
                  "of adaptrain)?");
  }
  if (challenge.magic != kChallengeMagic || challenge.version != kProtocolVersion) {
    throw IoError(who() + ": the process at " + connection.peer_address() + " (rank " +
                  std::to_string(peer) +
                  " in the peer list) did not answer with the collective handshake of this "
                  "version; check the peer list");
  }
  std::memcpy(outgoing.acceptor_nonce.data(), challenge.nonce, kNonceBytes);
  outgoing.own_nonce = random_nonce16();
  HandshakeContext context;
  context.channel = "collective";
  context.acceptor_nonce = outgoing.acceptor_nonce;
  context.initiator_nonce = outgoing.own_nonce;
  context.group_id = group_id_;
  context.cluster_version = options_.cluster_version;
  context.initiator_rank = static_cast<uint32_t>(options_.rank);
  context.acceptor_rank = static_cast<uint32_t>(peer);
  context.world_size = static_cast<uint32_t>(size());
  const Digest proof = handshake_proof(options_.secret, HandshakeRole::kInitiator, context);
  Hello hello{kHelloMagic,
              kProtocolVersion,
              static_cast<uint32_t>(options_.rank),
              static_cast<uint32_t>(peer),
              static_cast<uint32_t>(size()),
              0,
              group_id_,
              options_.cluster_version,
              {},
              {}};
  std::memcpy(hello.nonce, outgoing.own_nonce.data(), kNonceBytes);
  std::memcpy(hello.proof, proof.data(), proof.size());
  send_all(*this, connection, &hello, sizeof(hello), deadline);
  return outgoing;
}

bool TcpTransport::read_reply(Outgoing& outgoing, Deadline& deadline) {
  TcpConnection& connection = *outgoing.connection;
  HelloReply reply{};
  try {
    recv_all(*this, connection, &reply, sizeof(reply), deadline);
  } catch (const TimeoutError&) {
    throw TimeoutError(
        who() + ": " + connection.describe_peer() + " accepted the connection but did not answer " +
        "the handshake within the " + deadline.budget_text() + " timeout" + rejections_text());
  } catch (const IoError& e) {
    throw IoError(who() + ": " + connection.describe_peer() + " hung up during the handshake; " +
                  "is the process at that address a member of this group?");
  }
  if (reply.magic != kHelloMagic || reply.version != kProtocolVersion) {
    throw IoError(
        who() + ": the process at " + connection.peer_address() + " (rank " +
        std::to_string(connection.peer_rank()) +
        " in the peer list) did not answer with the collective handshake; check the peer list");
  }
  if (reply.status == kClusterVersionMismatch) {
    saw_other_cluster_version_ = true;
    note_rejection("the process at " + connection.peer_address() + " (rank " +
                   std::to_string(connection.peer_rank()) +
                   " in the peer list) answered from cluster version " +
                   std::to_string(reply.cluster_version) + ", this rank is at " +
                   std::to_string(options_.cluster_version));
    return false;
  }
  if (reply.status != kAccepted) {
    std::string detail = reply.status == kSizeMismatch
                             ? " (it has " + std::to_string(reply.world_size) +
                                   " ranks, this group " + std::to_string(size()) + ")"
                             : "";
    throw IoError(who() + ": " + connection.describe_peer() + " refused the connection because " +
                  status_reason(reply.status) + detail);
  }
  HandshakeContext context;
  context.channel = "collective";
  context.acceptor_nonce = outgoing.acceptor_nonce;
  context.initiator_nonce = outgoing.own_nonce;
  context.group_id = group_id_;
  context.cluster_version = options_.cluster_version;
  context.initiator_rank = static_cast<uint32_t>(options_.rank);
  context.acceptor_rank = static_cast<uint32_t>(connection.peer_rank());
  context.world_size = static_cast<uint32_t>(size());
  Digest claimed{};
  std::memcpy(claimed.data(), reply.proof, claimed.size());
  if (!digests_equal(claimed,
                     handshake_proof(options_.secret, HandshakeRole::kAcceptor, context))) {
    log_fabric_event(who() + " hung up on " + connection.peer_address() +
                     ": it accepted without proving membership of this run");
    throw IoError(who() + ": the process at " + connection.peer_address() + " (rank " +
                  std::to_string(connection.peer_rank()) +
                  " in the peer list) accepted the connection but could not prove it holds this "
                  "run's fabric secret; it is not a member of this job's run");
  }
  return true;
}

void TcpTransport::note_rejection(std::string text) {
  // Retries repeat the same story; keep each distinct one once, and only a few.
  if (std::find(rejections_.begin(), rejections_.end(), text) != rejections_.end()) return;
  if (rejections_.size() < 8) rejections_.push_back(std::move(text));
}

void TcpTransport::rendezvous() {
  Deadline deadline = Deadline::absolute(options_.timeout);
  const int rank = options_.rank;
  const std::string& own_address = options_.peers[rank];
  group_id_ = hash_peers(options_.peers);

  // Listen first: peers retry their connects until we are up.
  const HostPort address = parse_host_port(own_address);
  Socket listener =
      listen_on(address.host, address.port, options_.socket_buffer_bytes, deadline, who());

  listener_ = listener.get();
  for (int peer : options_.needed_peers) {
    if (peer < rank && std::find(expected_.begin(), expected_.end(), peer) == expected_.end()) {
      expected_.push_back(peer);
    }
  }

  // Phase 1: connect to higher ranks and send our hello.
  std::vector<Outgoing> awaiting_reply;
  for (int peer : options_.needed_peers) {
    if (peer < rank) continue;
    bool already = std::any_of(awaiting_reply.begin(), awaiting_reply.end(),
                               [&](const auto& o) { return o.connection->peer_rank() == peer; });
    if (already) continue;
    awaiting_reply.push_back(open_with_hello(peer, deadline));
  }

  // Phase 2: accept lower ranks and answer their hellos.
  while (!expected_.empty()) {
    if (deadline.expired()) {
      std::string missing;
      for (int peer : expected_) {
        missing += (missing.empty() ? "rank " : ", rank ") + std::to_string(peer) + " (" +
                   options_.peers[peer] + ")";
      }
      throw TimeoutError(who() + " waited " + deadline.budget_text() + " for " + missing +
                         " to connect" + rejections_text());
    }
    accept_pending(deadline, deadline);
  }

  // Phase 3: read the answers to our hellos. A peer address that answers
  // from another cluster version is not our peer yet (the previous version's
  // process may still be there, or ours has not started): hang up and try
  // again until it is, or until the timeout.
  for (Outgoing& outgoing : awaiting_reply) {
    int backoff_ms = 10;
    while (!read_reply(outgoing, deadline)) {
      const int peer = outgoing.connection->peer_rank();
      outgoing.connection.reset();
      const Deadline retry_at = Deadline::absolute(std::chrono::milliseconds(backoff_ms));
      while (!retry_at.expired() && !deadline.expired()) accept_pending(retry_at, deadline);
      backoff_ms = std::min(backoff_ms * 2, options_.connect_retry_ms);
      if (deadline.expired()) {
        throw TimeoutError(
            who() + " could not connect to rank " + std::to_string(peer) + " at " +
            options_.peers[peer] + " within the " + deadline.budget_text() +
            " timeout: the process there kept answering from another cluster version" +
            rejections_text());
      }
      outgoing = open_with_hello(peer, deadline);
    }
    const int peer = outgoing.connection->peer_rank();
    connections_[peer] = std::move(outgoing.connection);
  }
  // The listener closes here: the group is complete and its port is free again;
  // handshakes still under way were strangers.
  for (Incoming& incoming : incoming_) {
    refuse("dropped a connection from " + incoming.connection->peer_address() +
           " still handshaking when the group had formed");
  }
  incoming_.clear();
  listener_ = -1;
}

}  // namespace adaptrain::collective
