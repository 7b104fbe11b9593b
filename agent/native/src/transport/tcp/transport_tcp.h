// TCP implementation of the transport interface.
//
// Rendezvous: every rank listens on its own address from the peer list, then
// for each peer its algorithm needs, the lower rank connects and the higher
// rank accepts, so each pair shares exactly one full-duplex connection. Each
// pair's handshake (fabric protocol 4) is three messages:
//
//   initiator -> acceptor: hello (magic, protocol version, both ranks, group
//                size, a hash of the peer list, the cluster version, its fresh
//                nonce I), sent the moment its connect completes;
//   acceptor -> initiator: reply (a status; when the public fields match, its
//                own fresh nonce A and its proof of membership, an HMAC keyed
//                by the run's fabric secret over A, I and the context:
//                auth/fabric_auth.h);
//   initiator -> acceptor: confirm (its proof over the same A and I), sent
//                once the acceptor's proof checked out.
//
// The acceptor admits the link only when the confirm checks out, so a replayed
// hello and confirm fail (A is new every time) and a stranger without the
// secret never becomes a member; the initiator takes the link only from a
// process that proved it holds the secret. A process from another job or run,
// another cluster version or a wrong peer list is refused with a message that
// says which of those it was, and the refusal is logged with its address.
// Compared with a hello and a reply alone, the proofs cost the initiator
// nothing extra on the wire (the nonces ride on the hello and the reply) and
// the acceptor one more one-way trip (the confirm).
//
// Mixed builds: a peer speaking another fabric protocol (an older adaptrain
// without fabric authentication, protocol 2; the challenge-first protocol 3;
// or a newer one) is told so in a reply it understands where possible, and
// both sides' errors name the two protocol versions and which node to upgrade.
//
// All of a rank's handshakes run at once in one poll loop: the connects to
// every higher rank, the replies to read, the listener and every accepted
// connection's half-done handshake. Nothing waits for one peer before turning
// to the next (with more ranks than cores, each such wait costs a time slice),
// and the loop cannot deadlock whatever order the ranks start in.
//
// Strangers: each accepted connection has a deadline of its own
// (kAcceptHandshakeMs); an idle, trickling or lying connection is dropped when
// its deadline passes and never holds up the members still to come.
//
// Cluster versions (elastic resizing): a connection from another version is
// refused and never becomes a link. The connecting side of such a refusal
// hangs up and keeps retrying until its timeout, because during a resize the
// address in its list may still belong to the previous version's process for
// a moment; if the timeout runs out, the error says that peers at another
// version were seen.
//
// Pairs of ranks on one host may move their data to shared memory after the
// rendezvous (transport/shm/transport_shm.h): their TcpConnection is then wrapped by a
// ShmConnection and stays open as the pair's liveness channel; wait() sleeps
// on both kinds alike through Connection's poll hooks.
//
// Sockets are non-blocking, TCP_NODELAY (control messages and pipelined
// blocks must not wait for Nagle), with large send/receive buffers so a ring
// hop keeps the link busy while the receiver is reducing.
#pragma once

#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "auth/fabric_auth.h"
#include "transport/transport.h"

namespace adaptrain::collective {

struct HostPort {
  std::string host;  // without IPv6 brackets
  std::string port;
};

// "10.0.0.2:41000", "[::1]:41000", "node-3:41000". Throws InvalidArgumentError.
HostPort parse_host_port(const std::string& address);

// FNV-1a over the peer list: two processes only form a group when they were
// given the same list, in the same order.
uint64_t hash_peers(const std::vector<std::string>& peers);

struct TcpOptions {
  int rank = 0;
  std::vector<std::string> peers;            // "host:port" of every rank, by rank
  std::vector<int> needed_peers;             // ranks this rank exchanges data with
  std::chrono::milliseconds timeout{60000};  // budget for the whole rendezvous
  size_t socket_buffer_bytes = 0;            // 0: kernel autotuning
  int connect_retry_ms = 200;
  // Elastic sessions: only processes at the same cluster version connect.
  uint64_t cluster_version = 0;
  // The run's fabric secret (auth/fabric_auth.h); every rank must hold the same.
  std::string secret;
  // Called when a system call was interrupted by a signal; may throw
  // InterruptedError so that Ctrl-C stops a blocked call.
  std::function<void()> interrupt_check;
};

// One socket to one peer (non-blocking; see the file comment).
class TcpConnection final : public Connection {
 public:
  TcpConnection(int fd, int peer_rank, std::string peer_address)
      : fd_(fd), peer_rank_(peer_rank), peer_address_(std::move(peer_address)) {}
  ~TcpConnection() override { close(); }

  int peer_rank() const override { return peer_rank_; }
  const std::string& peer_address() const override { return peer_address_; }
  int fd() const { return fd_; }
  void identify(int peer_rank, std::string peer_address);

  size_t send_some(const void* data, size_t length) override;
  size_t recv_some(void* data, size_t length) override;
  size_t peek_some(void* data, size_t length, bool* closed) override;
  void close() override;
  void poll_target(bool send, bool recv, pollfd* target) const override;

 private:
  void check_open() const;

  int fd_;
  int peer_rank_;
  std::string peer_address_;
};

class TcpTransport final : public Transport {
 public:
  // Blocks until every needed peer is connected and has passed the handshake.
  static std::unique_ptr<TcpTransport> connect(const TcpOptions& options);
  ~TcpTransport() override;

  int rank() const override { return options_.rank; }
  int size() const override { return static_cast<int>(options_.peers.size()); }
  Connection& connection(int peer) override;
  bool has_connection(int peer) const override { return connections_.count(peer) > 0; }
  void wait(const WaitRequest* requests, size_t count, const Deadline& deadline,
            int spin_us) override;
  void shutdown() override;

  // Swapping a pair's link for another kind (transport/shm/transport_shm.h): the TCP
  // connection to `peer` leaves the transport, and `connection` (which may
  // own it) takes its place.
  std::unique_ptr<Connection> release_connection(int peer);
  void adopt_connection(int peer, std::unique_ptr<Connection> connection);
  const std::vector<std::string>& peers() const { return options_.peers; }
  uint64_t group_id() const { return group_id_; }
  uint64_t cluster_version() const { return options_.cluster_version; }
  std::string who() const;

 private:
  explicit TcpTransport(TcpOptions options);
  // A connection to a higher rank, from its connect to the peer's proof.
  struct Outgoing {
    enum class State { kIdle, kConnecting, kAwaitReply, kDone };
    int peer = -1;
    State state = State::kIdle;
    std::unique_ptr<TcpConnection> connection;  // once connecting
    std::chrono::steady_clock::time_point retry_at{};
    // The first retry comes soon: the ranks of a group start within a few
    // milliseconds of each other, and a peer refused for not listening yet
    // usually is a moment later. Then it doubles up to connect_retry_ms.
    int backoff_ms = 1;
    std::vector<sockaddr_storage> addresses;  // the peer's, resolved; tried in order
    std::vector<int> families;
    size_t next_address = 0;
    Nonce own_nonce{};
    std::vector<uint8_t> reply;
    size_t received = 0;
    std::string last_error = "no attempt finished";
  };
  // A connection accepted from someone claiming to be a lower rank.
  struct Incoming {
    std::unique_ptr<TcpConnection> connection;
    Deadline deadline;
    bool replied = false;  // the hello was answered; the confirm is due
    std::vector<uint8_t> bytes;
    size_t received = 0;
    HandshakeContext context;  // once replied
  };

  void rendezvous();
  // One poll over the listener and every handshake under way, and whatever
  // can move afterwards.
  void poll_round(Deadline& deadline);
  [[noreturn]] void throw_timeout(const Deadline& deadline);
  // Outgoing: connect (the next resolved address), on connect send the hello,
  // read and check the reply, send the confirm.
  void start_connect(Outgoing& outgoing);
  void finish_connect(Outgoing& outgoing);
  void send_hello(Outgoing& outgoing);
  void schedule_retry(Outgoing& outgoing);
  void continue_reply(Outgoing& outgoing);
  void check_reply(Outgoing& outgoing);
  // Incoming: accept every pending connection; read and answer the hello,
  // then check the confirm. True when `incoming` is finished with (admitted,
  // refused or dropped).
  void accept_all();
  bool continue_handshake(Incoming& incoming);
  bool answer_hello(Incoming& incoming);
  bool check_confirm(Incoming& incoming);
  void note_rejection(std::string text);
  // Notes why a connection was turned away and logs it.
  void refuse(const std::string& text);
  std::string rejections_text() const;
  // poll() that retries on EINTR after giving interrupt_check a chance to throw.
  int poll_retrying(::pollfd* fds, unsigned long count, const Deadline& deadline);

  TcpOptions options_;
  uint64_t group_id_ = 0;
  std::map<int, std::unique_ptr<Connection>> connections_;

  // Rendezvous state.
  int listener_ = -1;
  std::vector<int> expected_;            // lower ranks that have not connected yet
  std::vector<Outgoing> outgoing_;       // higher ranks, one each
  std::vector<Incoming> incoming_;       // accepted, handshake under way
  std::vector<std::string> rejections_;  // why strangers were turned away, for timeout messages
  bool saw_other_cluster_version_ = false;
};

}  // namespace adaptrain::collective
