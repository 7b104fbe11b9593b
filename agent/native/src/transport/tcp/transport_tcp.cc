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
// so they are sent as native-endian structs. Every message starts with a magic
// and the sender's protocol version, so a peer of another build is recognised
// from its first eight bytes whatever else changed.

namespace {

constexpr uint32_t kHelloMagic = 0x4C4F4341;      // "ACOL" on the wire
constexpr uint32_t kChallengeMagic = 0x48434341;  // "ACCH": protocol 3 opened with it
constexpr uint32_t kConfirmMagic = 0x46434341;    // "ACCF"
// 2: the cluster version joined the hello; 3: challenge-response with the run's
// secret (the acceptor spoke first); 4: the same proofs, with the nonces on the
// hello and its reply and the initiator's proof in a confirm.
constexpr uint32_t kProtocolVersion = 4;
// Protocol 2's hello and reply sizes: a peer of that build is answered in its
// own format, so that it reports a version mismatch rather than garbage.
constexpr size_t kProtocol2HelloBytes = 40;
// How long an accepted connection may take, from its accept, to deliver its
// hello and its confirm.
constexpr int kAcceptHandshakeMs = 2000;

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
  // Zeros. A protocol-3 acceptor reads 88 bytes of hello before it answers:
  // with these it reads the whole of ours and answers "different protocol
  // version" at once instead of waiting for bytes that never come.
  uint8_t padding[32];
};
static_assert(sizeof(Hello) == 88, "the hello's size is part of the wire format");

enum HelloStatus : uint32_t {
  kAccepted = 0,  // in a reply: the public fields match, the confirm is due
  kBadMagic = 1,
  kVersionMismatch = 2,
  kSizeMismatch = 3,
  kGroupMismatch = 4,
  kWrongReceiver = 5,
  kUnexpectedSender = 6,
  kClusterVersionMismatch = 7,
  kNotAMember = 8,  // sent after a confirm whose proof failed, then a hang-up
};

struct HelloReply {
  uint32_t magic;
  uint32_t version;
  uint32_t status;
  uint32_t responder_rank;
  uint32_t world_size;
  uint32_t reserved;
  uint64_t cluster_version;
  uint8_t nonce[kNonceBytes];  // the acceptor's, when accepted
  uint8_t proof[32];           // the acceptor's, when accepted; zeros otherwise
};
static_assert(sizeof(HelloReply) == 80, "the reply's size is part of the wire format");

struct Confirm {
  uint32_t magic;
  uint32_t version;
  uint8_t proof[32];  // the initiator's
};

// Protocol 2's reply: the first 32 bytes of ours.
constexpr size_t kProtocol2ReplyBytes = 32;

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

// "fabric protocol 2 (an adaptrain build from before fabric authentication)".
std::string protocol_text(uint32_t version) {
  std::string text = "fabric protocol " + std::to_string(version);
  if (version <= 2) return text + " (an adaptrain build from before fabric authentication)";
  if (version == 3) return text + " (an adaptrain build whose handshake starts with a challenge)";
  if (version > kProtocolVersion) return text + " (a newer adaptrain build)";
  return text;
}

// What to do about a peer at `address` that speaks `theirs`.
std::string version_advice(uint32_t theirs, const std::string& address) {
  const std::string host = address.substr(0, address.rfind(':'));
  std::string text = "; this rank speaks " + protocol_text(kProtocolVersion) +
                     ". Every worker of a job must run the same adaptrain: ";
  if (theirs > kProtocolVersion) return text + "upgrade adaptrain on this rank's node";
  return text + "upgrade adaptrain on the node at " + host;
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

namespace {

HandshakeContext collective_context(const Nonce& acceptor_nonce, const Nonce& initiator_nonce,
                                    uint64_t group_id, uint64_t cluster_version, int initiator,
                                    int acceptor, int world_size) {
  HandshakeContext context;
  context.channel = "collective";
  context.acceptor_nonce = acceptor_nonce;
  context.initiator_nonce = initiator_nonce;
  context.group_id = group_id;
  context.cluster_version = cluster_version;
  context.initiator_rank = static_cast<uint32_t>(initiator);
  context.acceptor_rank = static_cast<uint32_t>(acceptor);
  context.world_size = static_cast<uint32_t>(world_size);
  return context;
}

// Sends a handshake message whole or not at all: a fresh socket's buffer always
// takes these few bytes at once, so a short send means a broken connection.
bool send_whole(TcpConnection& connection, const void* data, size_t length) {
  try {
    return connection.send_some(data, length) == length;
  } catch (const IoError&) {
    return false;
  }
}

}  // namespace

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
    if (peer < rank) {
      if (std::find(expected_.begin(), expected_.end(), peer) == expected_.end()) {
        expected_.push_back(peer);
      }
    } else if (std::none_of(outgoing_.begin(), outgoing_.end(),
                            [&](const Outgoing& o) { return o.peer == peer; })) {
      outgoing_.emplace_back();
      outgoing_.back().peer = peer;
    }
  }
  // Every connect goes out now; on a loopback or a LAN most complete at once
  // and their hellos go with them.
  for (Outgoing& outgoing : outgoing_) start_connect(outgoing);

  auto complete = [&] {
    return expected_.empty() &&
           std::all_of(outgoing_.begin(), outgoing_.end(),
                       [](const Outgoing& o) { return o.state == Outgoing::State::kDone; });
  };
  while (!complete()) {
    if (deadline.expired()) throw_timeout(deadline);
    // Every round, not only on EINTR: a signal that arrived while this thread was
    // between two polls (connecting, handshaking) interrupted no system call, and a
    // formation waiting for a dead member would otherwise sit out its whole timeout.
    if (options_.interrupt_check) options_.interrupt_check();
    poll_round(deadline);
  }
  // The listener closes here: the group is complete and its port is free again;
  // handshakes still under way were strangers.
  for (Incoming& incoming : incoming_) {
    refuse("dropped a connection from " + incoming.connection->peer_address() +
           " still handshaking when the group had formed");
  }
  incoming_.clear();
  outgoing_.clear();
  listener_ = -1;
}

void TcpTransport::poll_round(Deadline& deadline) {
  using Clock = std::chrono::steady_clock;
  std::vector<pollfd> fds;
  fds.reserve(1 + outgoing_.size() + incoming_.size());
  fds.push_back(pollfd{listener_, POLLIN, 0});
  int wait_ms = deadline.remaining_ms();
  const Clock::time_point now = Clock::now();
  for (const Outgoing& outgoing : outgoing_) {
    short events = 0;
    if (outgoing.state == Outgoing::State::kConnecting) events = POLLOUT;
    if (outgoing.state == Outgoing::State::kAwaitReply) events = POLLIN;
    if (outgoing.state == Outgoing::State::kIdle) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(outgoing.retry_at - now);
      wait_ms = std::min<int>(wait_ms, std::max<int>(0, static_cast<int>(left.count())));
    }
    fds.push_back(pollfd{events != 0 ? outgoing.connection->fd() : -1, events, 0});
  }
  for (const Incoming& incoming : incoming_) {
    fds.push_back(pollfd{incoming.connection->fd(), POLLIN, 0});
    wait_ms = std::min(wait_ms, incoming.deadline.remaining_ms());
  }
  poll_retrying(fds.data(), fds.size(), Deadline::absolute(std::chrono::milliseconds(wait_ms)));

  // Our own connections first: they are what this rank waits for.
  for (size_t i = 0; i < outgoing_.size(); ++i) {
    Outgoing& outgoing = outgoing_[i];
    const short revents = fds[1 + i].revents;
    if (outgoing.state == Outgoing::State::kConnecting && revents != 0) {
      finish_connect(outgoing);
    } else if (outgoing.state == Outgoing::State::kAwaitReply && revents != 0) {
      continue_reply(outgoing);
    } else if (outgoing.state == Outgoing::State::kIdle && Clock::now() >= outgoing.retry_at) {
      start_connect(outgoing);
    }
  }
  const size_t base = 1 + outgoing_.size();
  std::vector<Incoming> still;
  for (size_t i = 0; i < incoming_.size(); ++i) {
    Incoming& incoming = incoming_[i];
    const bool readable = fds[base + i].revents != 0;
    if (readable && continue_handshake(incoming)) continue;
    if (!readable && incoming.deadline.expired()) {
      const std::string what =
          incoming.received == 0 && !incoming.replied
              ? ": it sent nothing within " + std::to_string(kAcceptHandshakeMs) +
                    " ms (an adaptrain build of fabric protocol 3 waits like this for a "
                    "challenge; if that is a worker of this job, upgrade adaptrain on its node)"
              : ": it sent no complete handshake within " + std::to_string(kAcceptHandshakeMs) +
                    " ms";
      refuse("dropped a connection from " + incoming.connection->peer_address() + what);
      continue;
    }
    still.push_back(std::move(incoming));
  }
  incoming_ = std::move(still);
  if (fds[0].revents & POLLIN) accept_all();
}

[[noreturn]] void TcpTransport::throw_timeout(const Deadline& deadline) {
  std::string missing;
  for (const Outgoing& outgoing : outgoing_) {
    if (outgoing.state == Outgoing::State::kDone) continue;
    const std::string& address = options_.peers[outgoing.peer];
    missing += missing.empty() ? "" : "; ";
    if (outgoing.state == Outgoing::State::kAwaitReply) {
      missing += "rank " + std::to_string(outgoing.peer) + " at " + address +
                 " accepted the connection but did not answer the handshake";
    } else if (saw_other_cluster_version_ && outgoing.last_error.empty()) {
      missing += "the process at " + address + " (rank " + std::to_string(outgoing.peer) +
                 ") kept answering from another cluster version";
    } else {
      missing += "could not connect to rank " + std::to_string(outgoing.peer) + " at " + address +
                 " (last error: " + outgoing.last_error +
                 "); is that rank running and listening there?";
    }
  }
  if (!expected_.empty()) {
    std::string ranks;
    for (int peer : expected_) {
      ranks += (ranks.empty() ? "rank " : ", rank ") + std::to_string(peer) + " (" +
               options_.peers[peer] + ")";
    }
    missing += (missing.empty() ? "" : "; ") + ranks + " did not connect";
  }
  throw TimeoutError(who() + " could not form the group within the " + deadline.budget_text() +
                     " timeout: " + missing + rejections_text());
}

void TcpTransport::start_connect(Outgoing& outgoing) {
  outgoing.connection.reset();
  if (outgoing.next_address >= outgoing.addresses.size()) {
    const HostPort address = parse_host_port(options_.peers[outgoing.peer]);
    AddrInfoList resolved;
    const int gai = resolve_address(address.host, address.port, false, resolved);
    outgoing.addresses.clear();
    outgoing.families.clear();
    outgoing.next_address = 0;
    if (gai != 0) {
      outgoing.last_error = std::string("cannot resolve host: ") + gai_strerror(gai);
      schedule_retry(outgoing);
      return;
    }
    for (addrinfo* ai = resolved.head; ai != nullptr; ai = ai->ai_next) {
      sockaddr_storage storage{};
      std::memcpy(&storage, ai->ai_addr, std::min<size_t>(ai->ai_addrlen, sizeof(storage)));
      outgoing.addresses.push_back(storage);
      outgoing.families.push_back(ai->ai_family);
    }
  }
  while (outgoing.next_address < outgoing.addresses.size()) {
    const size_t index = outgoing.next_address++;
    const int family = outgoing.families[index];
    Socket socket(::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (socket.get() < 0) {
      outgoing.last_error = errno_text(errno);
      continue;
    }
    set_buffer_sizes(socket.get(), options_.socket_buffer_bytes);
    const socklen_t length = family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in);
    const sockaddr* target = reinterpret_cast<const sockaddr*>(&outgoing.addresses[index]);
    int result;
    while ((result = ::connect(socket.get(), target, length)) != 0 && errno == EINTR) {
    }
    const int error = result == 0 ? 0 : errno;
    if (result != 0 && error != EINPROGRESS) {
      // Refused or unreachable: the peer is most likely still starting.
      outgoing.last_error = errno_text(error);
      continue;
    }
    outgoing.connection = std::make_unique<TcpConnection>(socket.release(), outgoing.peer,
                                                          options_.peers[outgoing.peer]);
    outgoing.state = Outgoing::State::kConnecting;
    if (result == 0) send_hello(outgoing);
    return;
  }
  schedule_retry(outgoing);
}

void TcpTransport::finish_connect(Outgoing& outgoing) {
  int error = 0;
  socklen_t length = sizeof(error);
  if (::getsockopt(outgoing.connection->fd(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
    error = errno;
  }
  if (error != 0) {
    outgoing.last_error = errno_text(error);
    // Refused (the peer is not listening yet) or unreachable: the next
    // resolved address, or, when every one has failed, a retry after the
    // backoff. Never a new round of connects at once: a refusal on a loopback
    // or a LAN comes back within microseconds, and reconnecting on the spot
    // spun this rank through connects, taking the CPU from the very peers
    // still starting up (with more ranks than cores).
    if (outgoing.next_address < outgoing.addresses.size()) {
      start_connect(outgoing);
    } else {
      schedule_retry(outgoing);
    }
    return;
  }
  send_hello(outgoing);
}

void TcpTransport::send_hello(Outgoing& outgoing) {
  TcpConnection& connection = *outgoing.connection;
  set_int_option(connection.fd(), IPPROTO_TCP, TCP_NODELAY, 1);
  outgoing.own_nonce = random_nonce16();
  Hello hello{kHelloMagic,
              kProtocolVersion,
              static_cast<uint32_t>(options_.rank),
              static_cast<uint32_t>(outgoing.peer),
              static_cast<uint32_t>(size()),
              0,
              group_id_,
              options_.cluster_version,
              {},
              {}};
  std::memcpy(hello.nonce, outgoing.own_nonce.data(), kNonceBytes);
  if (!send_whole(connection, &hello, sizeof(hello))) {
    outgoing.last_error = "the connection broke as the hello was sent";
    schedule_retry(outgoing);
    return;
  }
  outgoing.state = Outgoing::State::kAwaitReply;
  outgoing.reply.assign(sizeof(HelloReply), 0);
  outgoing.received = 0;
}

void TcpTransport::schedule_retry(Outgoing& outgoing) {
  outgoing.connection.reset();
  outgoing.state = Outgoing::State::kIdle;
  outgoing.next_address = outgoing.addresses.size();  // resolve again next time
  outgoing.retry_at =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(outgoing.backoff_ms);
  outgoing.backoff_ms = std::min(outgoing.backoff_ms * 2, options_.connect_retry_ms);
}

void TcpTransport::continue_reply(Outgoing& outgoing) {
  TcpConnection& connection = *outgoing.connection;
  // The first eight bytes say whose handshake this is; the rest of ours follows.
  const size_t want = outgoing.received < 8 ? 8 : sizeof(HelloReply);
  try {
    outgoing.received +=
        connection.recv_some(outgoing.reply.data() + outgoing.received, want - outgoing.received);
  } catch (const IoError&) {
    throw IoError(who() + ": " + connection.describe_peer() + " hung up during the handshake; " +
                  "is the process at that address a member of this group?");
  }
  if (outgoing.received < 8) return;
  uint32_t magic = 0, version = 0;
  std::memcpy(&magic, outgoing.reply.data(), 4);
  std::memcpy(&version, outgoing.reply.data() + 4, 4);
  const std::string there = "the process at " + connection.peer_address() + " (rank " +
                            std::to_string(outgoing.peer) + " in the peer list)";
  if ((magic == kChallengeMagic || magic == kHelloMagic) && version != kProtocolVersion) {
    throw IoError(who() + ": " + there + " speaks " + protocol_text(version) +
                  version_advice(version, connection.peer_address()));
  }
  if (magic != kHelloMagic) {
    throw IoError(who() + ": " + there +
                  " did not answer with the collective handshake; check the peer list");
  }
  if (outgoing.received < sizeof(HelloReply)) {
    if (want == 8) continue_reply(outgoing);  // the rest may be there already
    return;
  }
  check_reply(outgoing);
}

void TcpTransport::check_reply(Outgoing& outgoing) {
  TcpConnection& connection = *outgoing.connection;
  HelloReply reply{};
  std::memcpy(&reply, outgoing.reply.data(), sizeof(reply));
  const std::string there = "the process at " + connection.peer_address() + " (rank " +
                            std::to_string(outgoing.peer) + " in the peer list)";
  if (reply.status == kClusterVersionMismatch) {
    // Not our peer yet (the previous version's process may still be there,
    // or ours has not started): hang up and try again until the timeout.
    saw_other_cluster_version_ = true;
    note_rejection(there + " answered from cluster version " +
                   std::to_string(reply.cluster_version) + ", this rank is at " +
                   std::to_string(options_.cluster_version));
    outgoing.last_error.clear();
    outgoing.backoff_ms = std::max(outgoing.backoff_ms, 10);
    schedule_retry(outgoing);
    return;
  }
  if (reply.status != kAccepted) {
    std::string detail = reply.status == kSizeMismatch
                             ? " (it has " + std::to_string(reply.world_size) +
                                   " ranks, this group " + std::to_string(size()) + ")"
                             : "";
    throw IoError(who() + ": " + connection.describe_peer() + " refused the connection because " +
                  status_reason(reply.status) + detail);
  }
  Nonce acceptor_nonce{};
  std::memcpy(acceptor_nonce.data(), reply.nonce, kNonceBytes);
  const HandshakeContext context =
      collective_context(acceptor_nonce, outgoing.own_nonce, group_id_, options_.cluster_version,
                         options_.rank, outgoing.peer, size());
  Digest claimed{};
  std::memcpy(claimed.data(), reply.proof, claimed.size());
  if (!digests_equal(claimed,
                     handshake_proof(options_.secret, HandshakeRole::kAcceptor, context))) {
    log_fabric_event(who() + " hung up on " + connection.peer_address() +
                     ": it answered without proving membership of this run");
    throw IoError(who() + ": " + there +
                  " could not prove it holds this run's fabric secret: the two processes hold "
                  "different fabric secrets (another job or another run of it); it is not a "
                  "member of this job's run");
  }
  Confirm confirm{kConfirmMagic, kProtocolVersion, {}};
  const Digest proof = handshake_proof(options_.secret, HandshakeRole::kInitiator, context);
  std::memcpy(confirm.proof, proof.data(), proof.size());
  if (!send_whole(connection, &confirm, sizeof(confirm))) {
    throw IoError(who() + ": " + connection.describe_peer() + " hung up during the handshake; " +
                  "is the process at that address a member of this group?");
  }
  connections_[outgoing.peer] = std::move(outgoing.connection);
  outgoing.state = Outgoing::State::kDone;
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

void TcpTransport::accept_all() {
  for (;;) {
    sockaddr_storage remote{};
    socklen_t remote_length = sizeof(remote);
    int fd = ::accept4(listener_, reinterpret_cast<sockaddr*>(&remote), &remote_length,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) {
        return;
      }
      throw IoError(who() + " failed to accept a connection: " + errno_text(errno));
    }
    set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    Incoming incoming{std::make_unique<TcpConnection>(fd, -1, text_of(remote)),
                      Deadline::absolute(std::chrono::milliseconds(kAcceptHandshakeMs))};
    incoming.bytes.assign(sizeof(Hello), 0);
    // The hello usually came with the connection: answer it now rather than
    // after another wake-up.
    if (!continue_handshake(incoming)) incoming_.push_back(std::move(incoming));
  }
}

bool TcpTransport::continue_handshake(Incoming& incoming) {
  for (;;) {
    size_t want;
    if (incoming.replied) {
      want = sizeof(Confirm);
    } else if (incoming.received < 8) {
      want = 8;
    } else {
      uint32_t magic = 0, version = 0;
      std::memcpy(&magic, incoming.bytes.data(), 4);
      std::memcpy(&version, incoming.bytes.data() + 4, 4);
      want = magic != kHelloMagic           ? 8
             : version == kProtocolVersion  ? sizeof(Hello)
             : version <= 2 && version >= 1 ? kProtocol2HelloBytes
                                            : 8;
    }
    if (incoming.received >= want) {
      return incoming.replied ? check_confirm(incoming) : answer_hello(incoming);
    }
    size_t got = 0;
    try {
      got = incoming.connection->recv_some(incoming.bytes.data() + incoming.received,
                                           want - incoming.received);
    } catch (const IoError&) {
      refuse("a connection from " + incoming.connection->peer_address() +
             " hung up during the handshake");
      return true;
    }
    if (got == 0) return false;  // the rest later
    incoming.received += got;
  }
}

bool TcpTransport::answer_hello(Incoming& incoming) {
  const std::string remote_text = incoming.connection->peer_address();
  const int size = this->size();
  uint32_t magic = 0, version = 0;
  std::memcpy(&magic, incoming.bytes.data(), 4);
  std::memcpy(&version, incoming.bytes.data() + 4, 4);
  HelloReply reply{kHelloMagic,
                   kProtocolVersion,
                   kAccepted,
                   static_cast<uint32_t>(options_.rank),
                   static_cast<uint32_t>(size),
                   0,
                   options_.cluster_version,
                   {},
                   {}};
  size_t reply_bytes = sizeof(reply);
  Hello hello{};
  std::string claimed;
  if (magic != kHelloMagic) {
    reply.status = kBadMagic;
  } else if (version != kProtocolVersion) {
    reply.status = kVersionMismatch;
    if (version <= 2) {
      // Protocol 2 checks that the reply carries its own version before it reads
      // the status: so echoed, it reports "a different protocol version".
      reply.version = version;
      reply_bytes = kProtocol2ReplyBytes;
      std::memcpy(&hello, incoming.bytes.data(), kProtocol2HelloBytes);
      claimed = " claiming to be rank " + std::to_string(hello.sender_rank) + " of " +
                std::to_string(hello.world_size);
    }
  } else {
    std::memcpy(&hello, incoming.bytes.data(), sizeof(hello));
    claimed = " claiming to be rank " + std::to_string(hello.sender_rank) + " of " +
              std::to_string(hello.world_size);
    if (hello.cluster_version != options_.cluster_version) {
      // First: a member of another version has another peer list and size too,
      // and those differences say nothing useful.
      reply.status = kClusterVersionMismatch;
      saw_other_cluster_version_ = true;
      claimed += " at cluster version " + std::to_string(hello.cluster_version) +
                 " (this rank is at " + std::to_string(options_.cluster_version) + ")";
    } else if (hello.world_size != static_cast<uint32_t>(size)) {
      reply.status = kSizeMismatch;
    } else if (hello.group_id != group_id_) {
      reply.status = kGroupMismatch;
    } else if (hello.receiver_rank != static_cast<uint32_t>(options_.rank)) {
      reply.status = kWrongReceiver;
    } else if (std::find(expected_.begin(), expected_.end(), static_cast<int>(hello.sender_rank)) ==
               expected_.end()) {
      reply.status = kUnexpectedSender;
    }
  }
  if (reply.status == kAccepted) {
    // Our nonce and proof go with the answer; the sender is admitted only when
    // its confirm proves membership over both nonces.
    const Nonce nonce = random_nonce16();
    Nonce initiator_nonce{};
    std::memcpy(initiator_nonce.data(), hello.nonce, kNonceBytes);
    incoming.context =
        collective_context(nonce, initiator_nonce, group_id_, options_.cluster_version,
                           static_cast<int>(hello.sender_rank), options_.rank, size);
    const Digest proof =
        handshake_proof(options_.secret, HandshakeRole::kAcceptor, incoming.context);
    std::memcpy(reply.nonce, nonce.data(), kNonceBytes);
    std::memcpy(reply.proof, proof.data(), proof.size());
  }
  if (reply.status == kBadMagic || (reply.status == kVersionMismatch && version > 2)) {
    // Only its first eight bytes were read: take in whatever else of it has come,
    // so that our hang-up is a close and not a reset that could overtake the reply.
    uint8_t rest[512];
    try {
      while (incoming.connection->recv_some(rest, sizeof(rest)) > 0) {
      }
    } catch (const IoError&) {
    }
  }
  if (!send_whole(*incoming.connection, &reply, reply_bytes)) {
    refuse("a connection from " + remote_text + " hung up during the handshake");
    return true;
  }
  if (reply.status != kAccepted) {
    std::string because = status_reason(reply.status);
    if (reply.status == kVersionMismatch) {
      because = "it speaks " + protocol_text(version) + version_advice(version, remote_text);
    }
    refuse("refused a connection from " + remote_text + claimed + " because " + because);
    return true;
  }
  incoming.replied = true;
  incoming.received = 0;
  return false;
}

bool TcpTransport::check_confirm(Incoming& incoming) {
  const std::string remote_text = incoming.connection->peer_address();
  Confirm confirm{};
  std::memcpy(&confirm, incoming.bytes.data(), sizeof(confirm));
  const int sender = static_cast<int>(incoming.context.initiator_rank);
  const std::string claimed = " claiming to be rank " + std::to_string(sender);
  Digest claimed_proof{};
  std::memcpy(claimed_proof.data(), confirm.proof, claimed_proof.size());
  const bool proved =
      confirm.magic == kConfirmMagic && confirm.version == kProtocolVersion &&
      digests_equal(claimed_proof,
                    handshake_proof(options_.secret, HandshakeRole::kInitiator, incoming.context));
  if (!proved) {
    // Only a process without the secret gets here (one with another secret
    // already failed our proof), so the verdict never lands in a member's data.
    HelloReply verdict{kHelloMagic,
                       kProtocolVersion,
                       kNotAMember,
                       static_cast<uint32_t>(options_.rank),
                       static_cast<uint32_t>(size()),
                       0,
                       options_.cluster_version,
                       {},
                       {}};
    send_whole(*incoming.connection, &verdict, sizeof(verdict));
    refuse("refused a connection from " + remote_text + claimed + " because " +
           status_reason(kNotAMember));
    return true;
  }
  if (std::find(expected_.begin(), expected_.end(), sender) == expected_.end()) {
    refuse("refused a connection from " + remote_text + claimed + " because " +
           status_reason(kUnexpectedSender));
    return true;
  }
  incoming.connection->identify(sender, options_.peers[sender]);
  connections_[sender] = std::move(incoming.connection);
  expected_.erase(std::find(expected_.begin(), expected_.end(), sender));
  return true;
}

void TcpTransport::note_rejection(std::string text) {
  // Retries repeat the same story; keep each distinct one once, and only a few.
  if (std::find(rejections_.begin(), rejections_.end(), text) != rejections_.end()) return;
  if (rejections_.size() < 8) rejections_.push_back(std::move(text));
}

}  // namespace adaptrain::collective
