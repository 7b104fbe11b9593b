// Peer-to-peer named blobs: the store a rank publishes into, the server
// thread that answers other ranks' requests from it, and the client that
// fetches from other ranks (wire format in blob_protocol.h).
//
// Why a separate service rather than a collective: pair averaging and
// AD-PSGD pull a peer's latest model whenever the puller is ready, and the
// owner must not have to stop and make a matching call. So every
// communicator runs one server thread on its own ephemeral port (exchanged
// when the group forms); requesters connect lazily and keep the connection.
// The server copies nothing: a published blob is immutable and shared, so a
// request in flight keeps sending the version it started with while the owner
// publishes the next one.
//
// One server thread answers requests one at a time. That is enough for the
// intended use (a few peers pulling a model now and then) and keeps shutdown
// simple; a request waits behind another one's transfer, never behind a
// collective. Only members are served: every connection first proves it
// belongs to this run (blob_protocol.h), and until it has, the thread serves
// its handshake in small non-blocking steps beside everyone else's, under a
// deadline of its own (kBlobHandshakeMs from its accept), so an idle,
// trickling or lying stranger costs the members nothing and gets no byte of a
// blob. Members send their whole request at once; one that does not deliver a
// request within 2 s of its first byte is cut off.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/types.h"
#include "p2p/blob_protocol.h"
#include "transport/tcp/sockets.h"

namespace adaptrain::collective {

struct Blob {
  DataType dtype;
  uint64_t count;
  uint64_t version;
  std::vector<char> bytes;
};

// Thread-safe map from name to the latest published copy.
class BlobStore {
 public:
  // Copies `count` elements and returns the name's new version (1, 2, ...).
  uint64_t publish(const std::string& name, const void* data, size_t count, DataType dtype);
  // The latest copy, or null.
  std::shared_ptr<const Blob> find(const std::string& name) const;

 private:
  mutable std::mutex mutex_;
  std::unordered_map<std::string, std::shared_ptr<const Blob>> blobs_;
};

// Who a blob server or client belongs to, for checks and messages.
struct BlobIdentity {
  int rank = 0;
  uint64_t group_id = 0;
  uint64_t cluster_version = 0;
  std::chrono::milliseconds timeout{60000};  // inactivity budget of one transfer
  size_t socket_buffer_bytes = 0;
  int world_size = 0;
  std::string secret;  // the run's fabric secret (auth/fabric_auth.h)
};

class BlobServer {
 public:
  // Listens on an ephemeral port of `host` and starts the thread.
  BlobServer(const std::string& host, BlobIdentity identity, const BlobStore& store);
  ~BlobServer();
  BlobServer(const BlobServer&) = delete;
  BlobServer& operator=(const BlobServer&) = delete;

  int port() const { return port_; }
  // Wakes the thread (even mid-transfer), joins it and closes every socket.
  // Idempotent.
  void stop();

 private:
  // A connection: a member once it has proved itself; until then its
  // handshake's state.
  struct Client {
    Socket socket;
    std::string remote;
    bool member = false;
    Deadline deadline;
    Nonce nonce{};
    BlobProof proof{};
    size_t received = 0;
    uint64_t serial = 0;  // tells a client from a later one on the same descriptor
  };
  void serve();
  void accept_clients();
  // Closes a client's connection and forgets it.
  void drop(int fd);
  // Drops the connection that has been proving its membership longest (a member
  // proves itself within a round trip); false when there is none.
  bool drop_oldest_stranger(const std::string& why);
  // Moves a stranger's handshake along; false when it is done with (refused,
  // hung up).
  bool continue_handshake(Client& client);
  // Answers one request on `fd`; false when the connection is done (the peer
  // hung up, misbehaved or stop() was called).
  bool answer(int fd);

  const BlobIdentity identity_;
  const BlobStore& store_;
  Socket listener_;
  Socket wake_;     // eventfd: stop() writes, the thread's epoll wakes
  Socket epoll_;    // the listener, the eventfd and every client
  Socket reserve_;  // a spare descriptor, to turn a connection away when none are left
  int port_ = 0;
  // The server thread's only. Any number of clients (the process's descriptor
  // limit is the bound); strangers still proving membership are also kept in
  // accept order, which is their deadlines' order.
  std::unordered_map<int, Client> clients_;
  std::deque<std::pair<int, uint64_t>> unproven_;  // (fd, serial), oldest first
  size_t unproven_count_ = 0;
  uint64_t next_serial_ = 0;
  std::mutex stop_mutex_;
  std::thread thread_;
};

class BlobClient {
 public:
  // `addresses[r]`: rank r's blob server ("host:port"); `peers[r]`: its
  // collective address, for messages.
  BlobClient(BlobIdentity identity, std::vector<std::string> addresses,
             std::vector<std::string> peers, std::function<void()> interrupt_check);
  ~BlobClient();
  BlobClient(const BlobClient&) = delete;
  BlobClient& operator=(const BlobClient&) = delete;

  // Fills `out` with `peer`'s latest blob `name` and returns its version.
  // Throws InvalidArgumentError (unknown name, dtype or count mismatch),
  // TimeoutError or IoError. Requests to different peers run in parallel.
  // `timeout` (inactivity) defaults to the identity's.
  uint64_t request(int peer, const std::string& name, void* out, size_t count, DataType dtype,
                   std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  // Wakes requests in flight (they fail) and closes every connection. Idempotent.
  void close();

 private:
  struct Link {
    std::mutex mutex;  // one request at a time per peer: the stream is a sequence
    int fd = -1;       // written with both `mutex` and fds_mutex_ held
  };
  std::string describe(int peer) const;
  void forget(Link& link);
  // The requester's side of the membership handshake on a new connection.
  void prove_membership(int fd, int peer, Deadline& deadline);

  const BlobIdentity identity_;
  const std::vector<std::string> addresses_;
  const std::vector<std::string> peers_;
  const std::function<void()> interrupt_check_;
  std::vector<std::unique_ptr<Link>> links_;
  std::mutex fds_mutex_;
  bool closed_ = false;  // guarded by fds_mutex_
};

}  // namespace adaptrain::collective
