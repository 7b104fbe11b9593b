// A group of ranks that run collectives together: owns the transport, the
// per-call sequence number, the current algorithm and reusable buffers, and
// turns any failure into a closed communicator so that no later call runs on
// out-of-step streams. It also owns this rank's peer-to-peer blob service
// (p2p/blobs.h), which runs beside the collectives on connections of its own.
//
// Elastic sessions: a communicator belongs to one cluster version and only
// connects to processes at that version (transport/tcp/transport_tcp.h). Resizing means
// closing it and building the next version's communicator from the next
// member list; survivors reconnect over TCP, on the same addresses if they
// like (the listening port is free again once the group has formed).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "collectives/algorithm.h"
#include "collectives/allreduce_hierarchical.h"
#include "collectives/allreduce_ring.h"
#include "collectives/protocol.h"
#include "core/tunables.h"
#include "core/types.h"
#include "p2p/blobs.h"
#include "transport/transport.h"

namespace adaptrain::collective {

struct CommunicatorOptions {
  int rank = 0;
  std::vector<std::string> peers;  // "host:port" per rank; rank r listens on peers[r]
  // Budget for forming the group, and the longest a collective may go
  // without any data moving.
  std::chrono::milliseconds timeout{60000};
  // Used by calls that do not name one; every rank must start with the same.
  Algorithm algorithm = Algorithm::kAuto;
  // Elastic sessions: ranks connect only to processes at the same version.
  uint64_t cluster_version = 0;
  // The run's fabric secret: every connection between ranks proves it holds
  // it (auth/fabric_auth.h). Every rank must be given the same.
  std::string secret;
  std::function<void()> interrupt_check;  // see TcpOptions
};

// One array of a grouped (fused) allreduce.
struct Buffer {
  void* data;
  size_t count;  // elements
  DataType dtype;
};

class Communicator {
 public:
  // Blocks until connected to every peer (nothing for a single rank) and the
  // ranks have agreed on the algorithm and the COLLECTIVE_AUTO_* tunables.
  // Throws InvalidArgumentError (also when the ranks disagree), IoError or
  // TimeoutError.
  explicit Communicator(CommunicatorOptions options);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  uint64_t cluster_version() const { return cluster_version_; }
  double timeout_seconds() const { return timeout_.count() / 1000.0; }
  bool closed() const;
  Algorithm algorithm() const;
  // The algorithm an allreduce of `count` elements of `element_bytes` each
  // would run with `requested` (kDefault: the communicator's); kHierarchical
  // only when the group spans nodes with as many ranks on each.
  Algorithm allreduce_algorithm(size_t count, size_t element_bytes, Algorithm requested) const;
  // The same for a broadcast of `count` elements and an all-gather of `count`
  // per rank: kHierarchical when the group spans nodes and some node has
  // several ranks (any layout: a tree of chains, and leaders across nodes).
  Algorithm broadcast_algorithm(size_t count, size_t element_bytes, Algorithm requested) const;
  Algorithm allgather_algorithm(size_t count, size_t element_bytes, Algorithm requested) const;
  // Per rank, the node it is on (0, 1, ... in order of first rank): ranks whose
  // peer addresses share the host part are one node.
  const std::vector<int>& nodes() const { return layout_.node_of; }
  // Per rank, how this rank's data reaches it: "self", "shm" or "tcp".
  const std::vector<std::string>& link_kinds() const { return link_kinds_; }

  // Every call is collective: all ranks make the same calls in the same order
  // with the same counts, dtypes, ops, roots, shapes (shape_hash, see
  // collectives/protocol.h) and algorithms; a difference raises IoError. `algorithm`
  // kDefault uses the communicator's. Calls from several threads run one
  // after another.

  // In place. `data` holds `count` elements of `dtype`.
  void allreduce(void* data, size_t count, DataType dtype, ReduceOp op,
                 Algorithm algorithm = Algorithm::kDefault, uint64_t shape_hash = 0);
  // In place: every rank ends with root's `count` elements.
  void broadcast(void* data, size_t count, DataType dtype, int root,
                 Algorithm algorithm = Algorithm::kDefault, uint64_t shape_hash = 0);
  // `output` (size * count elements) ends with rank r's `input` at r * count.
  void allgather(const void* input, size_t count, DataType dtype, void* output,
                 Algorithm algorithm = Algorithm::kDefault, uint64_t shape_hash = 0);
  // `input` is `rows` rows of `row_elements`; `output` receives this rank's
  // segment of the reduction, segment_rows(rows, size, rank) (numpy's
  // array_split along axis 0). `input` is not modified.
  void reduce_scatter(const void* input, size_t rows, size_t row_elements, DataType dtype,
                      ReduceOp op, void* output, Algorithm algorithm = Algorithm::kDefault,
                      uint64_t shape_hash = 0);
  // True on every rank when every rank passed the same bytes, false on every
  // rank otherwise (lengths may differ).
  bool consensus(const void* data, size_t bytes);
  // Collective: the algorithm for later calls that name none. Every rank
  // must ask for the same one; otherwise every rank raises
  // InvalidArgumentError and the algorithm stays as it was.
  void set_algorithm(Algorithm algorithm);
  // Collective: the order in which the ring allreduce passes data (rank
  // order[i] sends to order[i+1]), so that a ring can avoid a slow path
  // between two ranks; empty means 0, 1, ..., size-1. The ring allreduce
  // (also on fused buffers) follows it, and so does the tree allreduce (its
  // root is order[0], the last ranks are leaves); the ring's all-gather,
  // reduce-scatter and broadcast keep rank order. Every rank must ask for the
  // same order, a permutation of the ranks; otherwise InvalidArgumentError and
  // the order stays as it was.
  void set_ring_order(const std::vector<int>& order);
  std::vector<int> ring_order() const;
  // Tensor fusion: the buffers of each dtype are packed into one, reduced in
  // one allreduce (per dtype, in order of first appearance) and unpacked.
  void grouped_allreduce(const std::vector<Buffer>& buffers, ReduceOp op,
                         Algorithm algorithm = Algorithm::kDefault);
  void barrier();

  // Peer to peer, not collective: no other rank makes a matching call, and
  // neither call waits for (or blocks) a collective running in another
  // thread. publish() stores a copy of `count` elements under `name`,
  // replacing the previous copy, and returns the name's new version (1, 2,
  // ...). request() fills `out` with `peer`'s latest copy of `name` (answered
  // by that rank's server thread, whatever it is doing) and returns its
  // version; `peer` may be this rank. An unknown name or a dtype or count
  // that differs from the blob's throws InvalidArgumentError; a peer that is
  // gone throws IoError, one that stalls TimeoutError. Neither closes the
  // communicator. `timeout` bounds the request's inactivity (0: the
  // communicator's timeout).
  uint64_t publish(const std::string& name, const void* data, size_t count, DataType dtype);
  uint64_t request(int peer, const std::string& name, void* out, size_t count, DataType dtype,
                   std::chrono::milliseconds timeout = std::chrono::milliseconds(0));

  // Stops the blob service and closes the connections; idempotent.
  void close();

 private:
  // Runs one collective under the lock; on failure closes the communicator
  // and rethrows with the operation and this rank in the message.
  template <typename Body>
  auto run(const char* operation, Body&& body);

  // The pieces run() bodies are made of; the lock is held.
  MessageHeader next_header(CollectiveKind kind, uint64_t count, DataType dtype, uint32_t op,
                            Algorithm algorithm, uint64_t shape_hash);
  // `hierarchical`: the call has a hierarchical version (allreduce,
  // broadcast, all-gather); reduce-scatter runs the flat ring where it would
  // be chosen.
  Algorithm resolve(Algorithm requested, size_t bytes, size_t count,
                    bool hierarchical = false) const;
  // COLLECTIVE_SPIN_US for a latency-bound call of `bytes`, else 0.
  int spin_for(size_t bytes) const;
  // The ring allreduce in ring_order_ (a TransportView when it is set).
  void ordered_ring_allreduce(const RingOptions& ring);
  void reduce_locked(void* data, size_t count, DataType dtype, ReduceOp op, Algorithm algorithm,
                     const MessageHeader& header);
  bool consensus_locked(const void* data, size_t bytes);
  // Starts the blob server and learns every rank's blob port (collective).
  void start_blob_service(const std::vector<std::string>& peers, uint64_t group_id,
                          std::function<void()> interrupt_check);
  void stop_blob_service();

  const int rank_;
  const int size_;
  const std::chrono::milliseconds timeout_;
  const Tunables tunables_;
  const uint64_t cluster_version_;
  const std::vector<std::string> peers_;
  const NodeLayout layout_;  // which ranks share a node (the hosts in peers_)
  const std::string secret_;

  mutable std::mutex mutex_;
  std::unique_ptr<Transport> transport_;  // null for a single rank
  Algorithm algorithm_;
  std::vector<int> ring_order_;  // empty: rank order (set_ring_order)
  std::vector<std::string> link_kinds_;
  bool closed_ = false;
  std::string failure_;  // why the communicator closed itself
  uint64_t sequence_ = 0;
  std::vector<char> scratch_;                     // the ring's receive buffer
  std::vector<std::vector<char>> child_scratch_;  // the tree's, one per child
  std::vector<char> work_;                        // fusion buffer, reduce-scatter copy, consensus

  // Peer-to-peer blobs: their own locks, never mutex_.
  BlobStore blobs_;
  std::unique_ptr<BlobServer> blob_server_;  // null for a single rank
  std::unique_ptr<BlobClient> blob_client_;  // null for a single rank
  std::atomic<bool> blobs_closed_{false};
};

}  // namespace adaptrain::collective
