#include "p2p/blobs.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/errors.h"
#include "transport/tcp/transport_tcp.h"

namespace adaptrain::collective {
namespace {

// At most this many connections may be proving their membership at once; a
// new one beyond it makes room by dropping the oldest of them (a member proves
// itself within a round trip, so the oldest is a stranger's), so a flood of
// idle connections cannot keep a real peer out. Members are not counted: any
// number may stay connected, up to the process's descriptor limit.
constexpr size_t kMaxUnprovenBlobClients = 1024;

enum class Direction { kSend, kReceive };

// Moves exactly `length` bytes over the non-blocking `fd`. Returns false if
// `wake_fd` (when >= 0) became readable first. Throws IoError when the peer
// hangs up or the connection breaks, TimeoutError when nothing moved for the
// deadline's budget. `what` ("receiving blob \"w\" from rank 2 (...)") goes
// into the messages.
// How long the server gives a connection to deliver a whole request once it has
// started sending one.
constexpr int kBlobRequestReadMs = 2000;
// How long a new connection has, from its accept, to prove its membership.
constexpr int kBlobHandshakeMs = 2000;

HandshakeContext blob_context(const BlobIdentity& identity, const Nonce& owner_nonce,
                              const Nonce& requester_nonce, uint32_t requester, uint32_t owner) {
  HandshakeContext context;
  context.channel = "blob";
  context.acceptor_nonce = owner_nonce;
  context.initiator_nonce = requester_nonce;
  context.group_id = identity.group_id;
  context.cluster_version = identity.cluster_version;
  context.initiator_rank = requester;
  context.acceptor_rank = owner;
  context.world_size = static_cast<uint32_t>(identity.world_size);
  return context;
}

bool move_all(int fd, Direction direction, void* data, size_t length, Deadline& deadline,
              int wake_fd, const std::function<void()>& interrupt_check, const std::string& what) {
  char* cursor = static_cast<char*>(data);
  while (length > 0) {
    const ssize_t moved = direction == Direction::kSend
                              ? ::send(fd, cursor, length, MSG_NOSIGNAL | MSG_DONTWAIT)
                              : ::recv(fd, cursor, length, MSG_DONTWAIT);
    if (moved > 0) {
      cursor += moved;
      length -= static_cast<size_t>(moved);
      deadline.note_progress();
      continue;
    }
    if (moved == 0) throw IoError("the connection was closed by the other side while " + what);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      throw IoError("the connection broke while " + what + ": " + errno_text(errno));
    }
    pollfd fds[2] = {{fd, static_cast<short>(direction == Direction::kSend ? POLLOUT : POLLIN), 0},
                     {wake_fd, POLLIN, 0}};
    const nfds_t count = wake_fd >= 0 ? 2 : 1;
    const int ready = ::poll(fds, count, deadline.remaining_ms());
    if (ready < 0) {
      if (errno != EINTR) throw IoError("poll failed while " + what + ": " + errno_text(errno));
      if (interrupt_check) interrupt_check();
      continue;
    }
    if (count == 2 && fds[1].revents != 0) return false;
    if (ready == 0 && deadline.expired()) {
      throw TimeoutError("nothing moved within the " + deadline.budget_text() + " timeout while " +
                         what);
    }
  }
  return true;
}

// One non-blocking connect to `address`, waiting at most until `deadline`.
Socket connect_once(const std::string& address, size_t buffer_bytes, const Deadline& deadline,
                    const std::function<void()>& interrupt_check, std::string* error_text) {
  const HostPort host_port = parse_host_port(address);
  AddrInfoList resolved;
  const int gai = resolve_address(host_port.host, host_port.port, false, resolved);
  if (gai != 0) {
    *error_text = std::string("cannot resolve host: ") + gai_strerror(gai);
    return Socket();
  }
  *error_text = "no address to try";
  for (addrinfo* ai = resolved.head; ai != nullptr; ai = ai->ai_next) {
    Socket socket(
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (socket.get() < 0) {
      *error_text = errno_text(errno);
      continue;
    }
    set_buffer_sizes(socket.get(), buffer_bytes);
    int error = 0;
    if (::connect(socket.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      error = errno;
      if (error == EINPROGRESS || error == EINTR) {
        pollfd p{socket.get(), POLLOUT, 0};
        int ready;
        while ((ready = ::poll(&p, 1, deadline.remaining_ms())) < 0 && errno == EINTR) {
          if (interrupt_check) interrupt_check();
        }
        if (ready <= 0) {
          *error_text = ready == 0 ? "connection attempt timed out" : errno_text(errno);
          continue;
        }
        socklen_t length = sizeof(error);
        if (::getsockopt(socket.get(), SOL_SOCKET, SO_ERROR, &error, &length) != 0) error = errno;
      }
    }
    if (error == 0) {
      set_int_option(socket.get(), IPPROTO_TCP, TCP_NODELAY, 1);
      return socket;
    }
    *error_text = errno_text(error);
  }
  return Socket();
}

}  // namespace

// ---------------------------------------------------------------------------

uint64_t BlobStore::publish(const std::string& name, const void* data, size_t count,
                            DataType dtype) {
  check_blob_name(name);
  // Copy outside the lock: a large model must not stall the server thread.
  auto blob = std::make_shared<Blob>();
  blob->dtype = dtype;
  blob->count = count;
  blob->bytes.resize(count * element_size(dtype));
  if (!blob->bytes.empty()) std::memcpy(blob->bytes.data(), data, blob->bytes.size());
  std::lock_guard<std::mutex> lock(mutex_);
  auto& slot = blobs_[name];
  blob->version = slot ? slot->version + 1 : 1;
  slot = std::move(blob);
  return slot->version;
}

std::shared_ptr<const Blob> BlobStore::find(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = blobs_.find(name);
  return found == blobs_.end() ? nullptr : found->second;
}

// ---------------------------------------------------------------------------

BlobServer::BlobServer(const std::string& host, BlobIdentity identity, const BlobStore& store)
    : identity_(identity), store_(store) {
  const std::string who = "rank " + std::to_string(identity.rank) + "'s blob service";
  listener_ =
      listen_on(host, "0", identity.socket_buffer_bytes, Deadline::absolute(identity.timeout), who);
  port_ = local_port(listener_.get());
  wake_ = Socket(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (wake_.get() < 0) throw IoError(who + ": eventfd failed: " + errno_text(errno));
  epoll_ = Socket(::epoll_create1(EPOLL_CLOEXEC));
  if (epoll_.get() < 0) throw IoError(who + ": epoll_create1 failed: " + errno_text(errno));
  for (int fd : {wake_.get(), listener_.get()}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) {
      throw IoError(who + ": epoll_ctl failed: " + errno_text(errno));
    }
  }
  reserve_ = Socket(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  thread_ = std::thread([this] { serve(); });
}

BlobServer::~BlobServer() { stop(); }

void BlobServer::stop() {
  std::lock_guard<std::mutex> lock(stop_mutex_);
  if (!thread_.joinable()) return;
  const uint64_t one = 1;
  while (::write(wake_.get(), &one, sizeof(one)) < 0 && errno == EINTR) {
  }
  thread_.join();
  listener_.reset();
}

void BlobServer::serve() {
  // Signals belong to the Python thread that waits on the collectives (Ctrl-C
  // must reach it), never to this one.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);

  epoll_event events[64];
  for (;;) {
    // Strangers past their deadline go; the oldest still waiting sets the wait
    // (members may stay quiet for ever; strangers may not).
    int wait_ms = -1;
    while (!unproven_.empty()) {
      const auto [fd, serial] = unproven_.front();
      auto found = clients_.find(fd);
      if (found == clients_.end() || found->second.serial != serial || found->second.member) {
        unproven_.pop_front();
        continue;
      }
      if (!found->second.deadline.expired()) {
        wait_ms = found->second.deadline.remaining_ms();
        break;
      }
      log_fabric_event("rank " + std::to_string(identity_.rank) +
                       "'s blob service dropped a connection from " + found->second.remote +
                       ": it did not prove membership within " + std::to_string(kBlobHandshakeMs) +
                       " ms");
      unproven_.pop_front();
      drop(fd);
    }
    const int ready = ::epoll_wait(epoll_.get(), events, 64, wait_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return;  // nothing sensible to do; requesters see their connections close
    }
    for (int i = 0; i < ready; ++i) {
      if (events[i].data.fd == wake_.get()) return;
    }
    for (int i = 0; i < ready; ++i) {
      const int fd = events[i].data.fd;
      if (fd == listener_.get()) {
        accept_clients();
        continue;
      }
      auto found = clients_.find(fd);
      if (found == clients_.end()) continue;
      Client& client = found->second;
      const bool keep = client.member ? answer(fd) : continue_handshake(client);
      if (!keep) drop(fd);
    }
  }
}

void BlobServer::drop(int fd) {
  auto found = clients_.find(fd);
  if (found == clients_.end()) return;
  if (!found->second.member) --unproven_count_;
  (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  clients_.erase(found);  // closes the socket
}

bool BlobServer::drop_oldest_stranger(const std::string& why) {
  while (!unproven_.empty()) {
    const auto [fd, serial] = unproven_.front();
    unproven_.pop_front();
    auto found = clients_.find(fd);
    if (found == clients_.end() || found->second.serial != serial || found->second.member) {
      continue;
    }
    log_fabric_event("rank " + std::to_string(identity_.rank) +
                     "'s blob service dropped a connection from " + found->second.remote +
                     " that had not proved membership yet: " + why);
    drop(fd);
    return true;
  }
  return false;
}

void BlobServer::accept_clients() {
  for (;;) {
    sockaddr_storage remote{};
    socklen_t remote_length = sizeof(remote);
    Socket socket(::accept4(listener_.get(), reinterpret_cast<sockaddr*>(&remote), &remote_length,
                            SOCK_NONBLOCK | SOCK_CLOEXEC));
    if (socket.get() < 0) {
      if (errno != EMFILE && errno != ENFILE) return;  // EAGAIN, or an aborted connection
      // Out of descriptors: a stranger's make room; with none, the newcomer is
      // turned away (through the spare descriptor, so that it is not left
      // waiting and the listener does not stay readable for ever).
      if (drop_oldest_stranger("the process is out of file descriptors")) continue;
      reserve_.reset();
      Socket refused(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      refused.reset();
      reserve_ = Socket(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      rlimit limit{};
      ::getrlimit(RLIMIT_NOFILE, &limit);
      log_fabric_event("rank " + std::to_string(identity_.rank) +
                       "'s blob service turned a connection away: the process has no file "
                       "descriptors left (its limit is " +
                       std::to_string(static_cast<unsigned long long>(limit.rlim_cur)) +
                       "; raise it with `ulimit -n` for more peers)");
      return;
    }
    if (unproven_count_ >= kMaxUnprovenBlobClients) {
      drop_oldest_stranger(std::to_string(kMaxUnprovenBlobClients) +
                           " connections were proving membership at once");
    }
    set_int_option(socket.get(), IPPROTO_TCP, TCP_NODELAY, 1);
    const int fd = socket.get();
    Client client{std::move(socket),
                  text_of(remote),
                  false,
                  Deadline::absolute(std::chrono::milliseconds(kBlobHandshakeMs)),
                  random_nonce16(),
                  {},
                  0,
                  ++next_serial_};
    BlobChallenge challenge{kBlobChallengeMagic,
                            kBlobWireVersion,
                            static_cast<uint32_t>(identity_.rank),
                            static_cast<uint32_t>(identity_.world_size),
                            identity_.group_id,
                            identity_.cluster_version,
                            {}};
    std::memcpy(challenge.nonce, client.nonce.data(), kNonceBytes);
    // A fresh socket's buffer always takes these few bytes at once.
    const ssize_t sent = ::send(fd, &challenge, sizeof(challenge), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent != static_cast<ssize_t>(sizeof(challenge))) continue;
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.fd = fd;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) continue;
    unproven_.emplace_back(fd, client.serial);
    clients_.emplace(fd, std::move(client));
    ++unproven_count_;
  }
}

bool BlobServer::continue_handshake(Client& client) {
  char* into = reinterpret_cast<char*>(&client.proof) + client.received;
  const ssize_t got =
      ::recv(client.socket.get(), into, sizeof(client.proof) - client.received, MSG_DONTWAIT);
  if (got < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) return true;
  if (got <= 0) return false;  // hung up or broke before proving anything
  client.received += static_cast<size_t>(got);
  if (client.received >= 8 && client.proof.magic == kBlobRequestMagicOfAnyVersion &&
      client.proof.version != kBlobWireVersion) {
    // A request without a proof: a requester of an older build (blob protocol 1,
    // before fabric authentication) or a newer one.
    log_fabric_event("rank " + std::to_string(identity_.rank) +
                     "'s blob service refused a connection from " + client.remote +
                     ": it speaks blob protocol " + std::to_string(client.proof.version) +
                     (client.proof.version < kBlobWireVersion
                          ? " (an adaptrain build from before fabric authentication)"
                          : " (a newer adaptrain build)") +
                     ", this rank speaks " + std::to_string(kBlobWireVersion) +
                     ". Every worker of a job must run the same adaptrain: upgrade adaptrain on " +
                     (client.proof.version < kBlobWireVersion ? "that node" : "this node"));
    return false;
  }
  if (client.received < sizeof(client.proof)) return true;
  const BlobProof& proof = client.proof;
  BlobWelcome welcome{kBlobWelcomeMagic, 1, {}};
  bool member = false;
  if (proof.magic == kBlobProofMagic && proof.version == kBlobWireVersion &&
      proof.requester < static_cast<uint32_t>(identity_.world_size)) {
    Nonce requester_nonce;
    std::memcpy(requester_nonce.data(), proof.nonce, kNonceBytes);
    const HandshakeContext context =
        blob_context(identity_, client.nonce, requester_nonce, proof.requester,
                     static_cast<uint32_t>(identity_.rank));
    Digest claimed;
    std::memcpy(claimed.data(), proof.proof, claimed.size());
    member = digests_equal(claimed,
                           handshake_proof(identity_.secret, HandshakeRole::kInitiator, context));
    if (member) {
      welcome.status = 0;
      const Digest own = handshake_proof(identity_.secret, HandshakeRole::kAcceptor, context);
      std::memcpy(welcome.proof, own.data(), own.size());
    }
  }
  if (!member) {
    log_fabric_event("rank " + std::to_string(identity_.rank) +
                     "'s blob service refused a connection from " + client.remote +
                     ": it did not prove membership of this run (another job, run or "
                     "cluster version, or not a worker)");
  }
  const ssize_t sent =
      ::send(client.socket.get(), &welcome, sizeof(welcome), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (sent != static_cast<ssize_t>(sizeof(welcome))) return false;
  if (member) --unproven_count_;
  client.member = member;
  return member;
}

bool BlobServer::answer(int fd) {
  Deadline deadline = Deadline::inactivity(identity_.timeout);
  // A requester sends its whole request at once: one that trickles it is cut off
  // after this, so it cannot hold the (one-at-a-time) server against real peers.
  Deadline request_deadline = Deadline::absolute(
      std::min(std::chrono::milliseconds(kBlobRequestReadMs), identity_.timeout));
  const std::function<void()> no_interrupts;
  try {
    BlobHeaderBytes bytes{};
    if (!move_all(fd, Direction::kReceive, bytes.data(), bytes.size(), request_deadline,
                  wake_.get(), no_interrupts, "reading a blob request")) {
      return false;
    }
    BlobRequest request;
    if (!decode_blob_request(bytes.data(), &request)) return false;  // not one of ours: hang up
    std::string name;
    std::shared_ptr<const Blob> blob;
    const bool readable_name = request.name_bytes > 0 && request.name_bytes <= kMaxBlobNameBytes;
    if (readable_name) {
      name.resize(request.name_bytes);
      if (!move_all(fd, Direction::kReceive, name.data(), name.size(), request_deadline,
                    wake_.get(), no_interrupts, "reading a blob request")) {
        return false;
      }
      blob = store_.find(name);
    }
    const BlobReply reply = answer_blob_request(
        request, identity_.group_id, identity_.cluster_version,
        static_cast<uint32_t>(identity_.rank), blob != nullptr,
        blob ? blob->dtype : DataType::kUint8, blob ? blob->count : 0, blob ? blob->version : 0);
    const BlobHeaderBytes reply_bytes = encode_blob_reply(reply);
    const std::string what = "sending blob \"" + name + "\"";
    if (!move_all(fd, Direction::kSend, const_cast<uint8_t*>(reply_bytes.data()),
                  reply_bytes.size(), deadline, wake_.get(), no_interrupts, what)) {
      return false;
    }
    if (reply.status == BlobStatus::kOk && reply.payload_bytes > 0) {
      if (!move_all(fd, Direction::kSend, const_cast<char*>(blob->bytes.data()), blob->bytes.size(),
                    deadline, wake_.get(), no_interrupts, what)) {
        return false;
      }
    }
    // A requester from another group, or one we could not understand, is done.
    return reply.status != BlobStatus::kWrongGroup && reply.status != BlobStatus::kBadRequest;
  } catch (const Error&) {
    return false;  // the requester hung up or stalled; it sees the error on its side
  }
}

// ---------------------------------------------------------------------------

BlobClient::BlobClient(BlobIdentity identity, std::vector<std::string> addresses,
                       std::vector<std::string> peers, std::function<void()> interrupt_check)
    : identity_(identity),
      addresses_(std::move(addresses)),
      peers_(std::move(peers)),
      interrupt_check_(std::move(interrupt_check)) {
  for (size_t i = 0; i < addresses_.size(); ++i) links_.push_back(std::make_unique<Link>());
}

BlobClient::~BlobClient() { close(); }

std::string BlobClient::describe(int peer) const {
  return "rank " + std::to_string(peer) + " (" + peers_[peer] + ")";
}

void BlobClient::forget(Link& link) {
  std::lock_guard<std::mutex> lock(fds_mutex_);
  if (link.fd >= 0) ::close(link.fd);
  link.fd = -1;
}

void BlobClient::close() {
  {
    // Shut down (not close) under the lock: a request in flight wakes and
    // fails, and its descriptor number cannot be reused under it.
    std::lock_guard<std::mutex> lock(fds_mutex_);
    if (closed_) return;
    closed_ = true;
    for (auto& link : links_) {
      if (link->fd >= 0) ::shutdown(link->fd, SHUT_RDWR);
    }
  }
  for (auto& link : links_) {
    std::lock_guard<std::mutex> lock(link->mutex);
    forget(*link);
  }
}

void BlobClient::prove_membership(int fd, int peer, Deadline& deadline) {
  const std::string who = describe(peer);
  const std::string what = "proving membership to " + who + "'s blob service";
  BlobChallenge challenge{};
  try {
    move_all(fd, Direction::kReceive, &challenge, sizeof(challenge), deadline, -1, interrupt_check_,
             what);
  } catch (const TimeoutError& e) {
    throw TimeoutError(std::string(e.what()) +
                       ": it sent no challenge (an adaptrain build from before fabric "
                       "authentication, blob protocol 1, waits silently like this; every worker "
                       "of a job must run the same adaptrain: if that node runs an older one, "
                       "upgrade adaptrain on it)");
  }
  if (challenge.magic == kBlobChallengeMagic && challenge.version != kBlobWireVersion) {
    const bool newer = challenge.version > kBlobWireVersion;
    throw IoError("the process at " + addresses_[peer] + " (" + who +
                  "'s blob service) speaks blob protocol " + std::to_string(challenge.version) +
                  (newer ? " (a newer adaptrain build)" : "") + ", this rank speaks " +
                  std::to_string(kBlobWireVersion) +
                  ". Every worker of a job must run the same adaptrain: upgrade adaptrain on " +
                  (newer ? "this rank's node" : "that node"));
  }
  if (challenge.magic != kBlobChallengeMagic) {
    throw IoError("the process at " + addresses_[peer] + " (" + who +
                  "'s blob service) did not answer with the blob handshake of this version");
  }
  if (challenge.cluster_version != identity_.cluster_version ||
      challenge.group_id != identity_.group_id) {
    throw IoError("the blob service at " + addresses_[peer] +
                  " belongs to another group or cluster version (it is at version " +
                  std::to_string(challenge.cluster_version) + ", this rank at " +
                  std::to_string(identity_.cluster_version) + "): a stale address");
  }
  Nonce owner_nonce;
  std::memcpy(owner_nonce.data(), challenge.nonce, kNonceBytes);
  const Nonce own_nonce = random_nonce16();
  const HandshakeContext context =
      blob_context(identity_, owner_nonce, own_nonce, static_cast<uint32_t>(identity_.rank),
                   static_cast<uint32_t>(peer));
  BlobProof proof{
      kBlobProofMagic, kBlobWireVersion, static_cast<uint32_t>(identity_.rank), 0, {}, {}};
  std::memcpy(proof.nonce, own_nonce.data(), kNonceBytes);
  const Digest mac = handshake_proof(identity_.secret, HandshakeRole::kInitiator, context);
  std::memcpy(proof.proof, mac.data(), mac.size());
  move_all(fd, Direction::kSend, &proof, sizeof(proof), deadline, -1, interrupt_check_, what);
  BlobWelcome welcome{};
  try {
    move_all(fd, Direction::kReceive, &welcome, sizeof(welcome), deadline, -1, interrupt_check_,
             what);
  } catch (const IoError&) {
    throw IoError(who + "'s blob service hung up on the membership handshake");
  }
  if (welcome.magic != kBlobWelcomeMagic || welcome.status != 0) {
    throw IoError(who +
                  "'s blob service refused this rank's proof of membership (the two "
                  "ranks hold different fabric secrets: another job or run)");
  }
  Digest claimed;
  std::memcpy(claimed.data(), welcome.proof, claimed.size());
  if (!digests_equal(claimed,
                     handshake_proof(identity_.secret, HandshakeRole::kAcceptor, context))) {
    log_fabric_event("rank " + std::to_string(identity_.rank) + " hung up on the blob service at " +
                     addresses_[peer] + ": it could not prove membership of this run");
    throw IoError("the blob service at " + addresses_[peer] + " (" + who +
                  ") could not prove it holds this run's fabric secret; no blob was taken from it");
  }
}

uint64_t BlobClient::request(int peer, const std::string& name, void* out, size_t count,
                             DataType dtype, std::chrono::milliseconds timeout) {
  Link& link = *links_.at(static_cast<size_t>(peer));
  std::lock_guard<std::mutex> lock(link.mutex);
  const std::string who = describe(peer);
  auto check_open = [&] {
    if (closed_) throw IoError("the communicator is closed");
  };
  {
    std::lock_guard<std::mutex> fds_lock(fds_mutex_);
    check_open();
  }
  Deadline deadline = Deadline::inactivity(timeout.count() > 0 ? timeout : identity_.timeout);
  try {
    if (link.fd < 0) {
      std::string error;
      Socket socket = connect_once(addresses_[peer], identity_.socket_buffer_bytes, deadline,
                                   interrupt_check_, &error);
      if (socket.get() < 0) {
        throw IoError("could not connect to " + who + "'s blob service at " + addresses_[peer] +
                      " (" + error + "); has that rank closed its communicator or exited?");
      }
      prove_membership(socket.get(), peer, deadline);
      std::lock_guard<std::mutex> fds_lock(fds_mutex_);
      check_open();
      link.fd = socket.release();
    }
    BlobRequest request;
    request.group_id = identity_.group_id;
    request.cluster_version = identity_.cluster_version;
    request.requester = static_cast<uint32_t>(identity_.rank);
    request.dtype = static_cast<uint32_t>(dtype);
    request.count = count;
    request.name_bytes = static_cast<uint32_t>(name.size());
    const BlobHeaderBytes header = encode_blob_request(request);
    std::vector<char> message(header.begin(), header.end());
    message.insert(message.end(), name.begin(), name.end());
    const std::string sending = "sending the request for blob \"" + name + "\" to " + who;
    move_all(link.fd, Direction::kSend, message.data(), message.size(), deadline, -1,
             interrupt_check_, sending);
    BlobHeaderBytes reply_bytes{};
    const std::string receiving = "receiving blob \"" + name + "\" from " + who;
    move_all(link.fd, Direction::kReceive, reply_bytes.data(), reply_bytes.size(), deadline, -1,
             interrupt_check_, receiving);
    BlobReply reply;
    if (!decode_blob_reply(reply_bytes.data(), &reply)) {
      throw IoError(who + " answered the request for blob \"" + name + "\" with garbage");
    }
    check_blob_reply(reply, name, dtype, count, who);
    if (reply.payload_bytes > 0) {
      move_all(link.fd, Direction::kReceive, out, reply.payload_bytes, deadline, -1,
               interrupt_check_, receiving);
    }
    return reply.blob_version;
  } catch (const InvalidArgumentError&) {
    throw;  // answered before any data: the connection is still in step
  } catch (const InterruptedError&) {
    forget(link);
    throw;
  } catch (const Error&) {
    forget(link);
    std::lock_guard<std::mutex> fds_lock(fds_mutex_);
    if (closed_) throw IoError("the communicator was closed while the request was in flight");
    throw;
  }
}

}  // namespace adaptrain::collective
