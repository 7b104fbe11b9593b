#include "communicator.h"

#include <algorithm>
#include <cstring>

#include "collectives/allreduce_ring.h"
#include "collectives/allreduce_star.h"
#include "collectives/allreduce_tree.h"
#include "collectives/barrier.h"
#include "collectives/segments.h"
#include "core/errors.h"
#include "transport/shm/transport_shm.h"
#include "transport/tcp/transport_tcp.h"
#include "transport/transport_view.h"

namespace adaptrain::collective {
namespace {

int checked_size(const CommunicatorOptions& options) {
  if (options.peers.empty()) {
    throw InvalidArgumentError("peers is empty: give one \"host:port\" per rank");
  }
  const int size = static_cast<int>(options.peers.size());
  if (options.rank < 0 || options.rank >= size) {
    throw InvalidArgumentError("rank " + std::to_string(options.rank) + " is out of range for " +
                               std::to_string(size) + " peers: use 0.." + std::to_string(size - 1));
  }
  if (options.timeout.count() <= 0) throw InvalidArgumentError("timeout must be positive");
  if (options.algorithm == Algorithm::kDefault) {
    throw InvalidArgumentError("a communicator needs an algorithm");
  }
  for (const std::string& peer : options.peers) parse_host_port(peer);
  return size;
}

TreeTopology topology_for(Algorithm algorithm, int rank, int size, int root) {
  switch (algorithm) {
    case Algorithm::kRing:
      return chain(rank, size, root);
    case Algorithm::kStar:
      return star(rank, size, root);
    default:
      return binary_tree(rank, size, root);
  }
}

std::vector<std::string> hosts_of(const std::vector<std::string>& peers) {
  std::vector<std::string> hosts;
  for (const std::string& peer : peers) hosts.push_back(parse_host_port(peer).host);
  return hosts;
}

void check_data(const void* data, size_t count, const char* what) {
  if (count > 0 && data == nullptr) throw InvalidArgumentError(std::string(what) + " is null");
}

}  // namespace

template <typename Body>
auto Communicator::run(const char* operation, Body&& body) {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::string context = std::string(operation) + " on rank " + std::to_string(rank_) +
                              " of " + std::to_string(size_) + ": ";
  if (closed_) {
    throw IoError(context + (failure_.empty()
                                 ? "the communicator is closed"
                                 : "the communicator was closed by an earlier failure (" +
                                       failure_ + "); create a new one"));
  }
  // Any failure after the first byte leaves the streams out of step, so the
  // communicator closes itself; shutting the sockets down also tells the
  // peers at once instead of after their timeout.
  auto fail = [&](const std::exception& e) {
    closed_ = true;
    failure_ = e.what();
    if (transport_) transport_->shutdown();
    stop_blob_service();
  };
  try {
    return body();
  } catch (const TimeoutError& e) {
    fail(e);
    throw TimeoutError(context + e.what());
  } catch (const IoError& e) {
    fail(e);
    throw IoError(context + e.what());
  } catch (const InterruptedError& e) {
    fail(e);
    throw;
  }
}

Communicator::Communicator(CommunicatorOptions options)
    : rank_(options.rank),
      size_(checked_size(options)),
      timeout_(options.timeout),
      tunables_(tunables()),
      cluster_version_(options.cluster_version),
      peers_(options.peers),
      layout_(node_layout(hosts_of(options.peers), options.rank)),
      secret_(options.secret),
      algorithm_(options.algorithm),
      link_kinds_(1, "self") {
  if (size_ == 1) return;
  // Every rank connects to every other: the ring, the trees rooted anywhere
  // and the star all find their links, and the algorithm can change per call.
  TcpOptions tcp;
  tcp.rank = rank_;
  tcp.peers = std::move(options.peers);
  for (int peer = 0; peer < size_; ++peer) {
    if (peer != rank_) tcp.needed_peers.push_back(peer);
  }
  tcp.timeout = timeout_;
  tcp.socket_buffer_bytes = tunables_.socket_buffer_bytes;
  tcp.connect_retry_ms = tunables_.connect_retry_ms;
  tcp.interrupt_check = options.interrupt_check;
  tcp.cluster_version = cluster_version_;
  tcp.secret = secret_;
  std::unique_ptr<TcpTransport> connected = TcpTransport::connect(tcp);
  TcpTransport& sockets = *connected;
  transport_ = std::move(connected);

  // "auto" must pick the same algorithm on every rank, so the ranks check
  // that they were started alike before the first collective.
  const std::string settings =
      std::string("algorithm=") + name_of(algorithm_) + "\n" + tunables_.describe();
  const bool agreed =
      run("forming the group", [&] { return consensus_locked(settings.data(), settings.size()); });
  if (!agreed) {
    throw InvalidArgumentError(
        "rank " + std::to_string(rank_) +
        ": the ranks were started with different settings; this rank has algorithm=\"" +
        name_of(algorithm_) + "\" and " + tunables_.describe() +
        "every rank must use the same algorithm, COLLECTIVE_AUTO_* and "
        "COLLECTIVE_LOCAL_TRANSPORT values");
  }
  // Ranks on one host move their pairs to shared memory (transport/shm/transport_shm.h);
  // the settings above are agreed, so every pair decides alike.
  ShmOptions shm;
  shm.mode = tunables_.local_transport;
  shm.buffer_bytes = tunables_.shm_buffer_bytes;
  Deadline setup = Deadline::absolute(timeout_);
  link_kinds_ = run("forming the group", [&] { return use_shared_memory(sockets, shm, setup); });
  start_blob_service(peers_, hash_peers(peers_), std::move(options.interrupt_check));
}

Communicator::~Communicator() { close(); }

void Communicator::start_blob_service(const std::vector<std::string>& peers, uint64_t group_id,
                                      std::function<void()> interrupt_check) {
  BlobIdentity identity;
  identity.rank = rank_;
  identity.group_id = group_id;
  identity.cluster_version = cluster_version_;
  identity.timeout = timeout_;
  identity.socket_buffer_bytes = tunables_.socket_buffer_bytes;
  identity.world_size = size_;
  identity.secret = secret_;
  // On the host this rank listens on for collectives: the peers can reach it.
  const std::string host = parse_host_port(peers[rank_]).host;
  blob_server_ = std::make_unique<BlobServer>(host, identity, blobs_);
  // An all-gather of the ports (bitwise OR of zeros and one's own slot, as
  // allgather does on the tree): the last step of forming the group.
  std::vector<int64_t> ports(size_, 0);
  ports[rank_] = blob_server_->port();
  run("forming the group", [&] {
    const MessageHeader header =
        next_header(CollectiveKind::kAllgather, 1, DataType::kInt64, 0, Algorithm::kTree, 0);
    reduce_locked(ports.data(), ports.size() * sizeof(int64_t), DataType::kUint8, ReduceOp::kBitOr,
                  Algorithm::kTree, header);
  });
  std::vector<std::string> addresses;
  for (int r = 0; r < size_; ++r) {
    const std::string peer_host = parse_host_port(peers[r]).host;
    const bool ipv6 = peer_host.find(':') != std::string::npos;
    addresses.push_back((ipv6 ? "[" + peer_host + "]" : peer_host) + ":" +
                        std::to_string(ports[r]));
  }
  blob_client_ = std::make_unique<BlobClient>(identity, std::move(addresses), peers,
                                              std::move(interrupt_check));
}

void Communicator::stop_blob_service() {
  blobs_closed_ = true;
  if (blob_client_) blob_client_->close();
  if (blob_server_) blob_server_->stop();
}

uint64_t Communicator::publish(const std::string& name, const void* data, size_t count,
                               DataType dtype) {
  (void)element_size(dtype);
  check_data(data, count, "publish: data");
  check_blob_name(name);
  if (blobs_closed_) {
    throw IoError("publish of blob \"" + name + "\" on rank " + std::to_string(rank_) + " of " +
                  std::to_string(size_) + ": the communicator is closed");
  }
  return blobs_.publish(name, data, count, dtype);
}

uint64_t Communicator::request(int peer, const std::string& name, void* out, size_t count,
                               DataType dtype, std::chrono::milliseconds timeout) {
  (void)element_size(dtype);
  check_data(out, count, "request: out");
  check_blob_name(name);
  if (peer < 0 || peer >= size_) {
    throw InvalidArgumentError("request: peer " + std::to_string(peer) +
                               " is out of range: use 0.." + std::to_string(size_ - 1));
  }
  const std::string context = "request of blob \"" + name + "\" from rank " + std::to_string(peer) +
                              " on rank " + std::to_string(rank_) + " of " + std::to_string(size_) +
                              ": ";
  if (blobs_closed_) throw IoError(context + "the communicator is closed");
  if (peer == rank_) {
    // Our own blob: the same checks as a remote request, then a copy.
    const std::shared_ptr<const Blob> blob = blobs_.find(name);
    BlobRequest own;
    own.cluster_version = cluster_version_;
    own.dtype = static_cast<uint32_t>(dtype);
    own.count = count;
    own.name_bytes = static_cast<uint32_t>(name.size());
    const BlobReply reply = answer_blob_request(
        own, 0, cluster_version_, static_cast<uint32_t>(rank_), blob != nullptr,
        blob ? blob->dtype : DataType::kUint8, blob ? blob->count : 0, blob ? blob->version : 0);
    try {
      check_blob_reply(reply, name, dtype, count, "rank " + std::to_string(rank_) + " (this rank)");
    } catch (const InvalidArgumentError& e) {
      throw InvalidArgumentError(context + e.what());
    }
    if (!blob->bytes.empty()) std::memcpy(out, blob->bytes.data(), blob->bytes.size());
    return blob->version;
  }
  try {
    return blob_client_->request(peer, name, out, count, dtype, timeout);
  } catch (const InvalidArgumentError& e) {
    throw InvalidArgumentError(context + e.what());
  } catch (const TimeoutError& e) {
    throw TimeoutError(context + e.what());
  } catch (const IoError& e) {
    throw IoError(context + e.what());
  }
}

bool Communicator::closed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return closed_;
}

Algorithm Communicator::algorithm() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return algorithm_;
}

Algorithm Communicator::allreduce_algorithm(size_t count, size_t element_bytes,
                                            Algorithm requested) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (size_ == 1) return requested == Algorithm::kDefault ? algorithm_ : requested;
  return resolve(requested, count * element_bytes, count, true);
}

Algorithm Communicator::broadcast_algorithm(size_t count, size_t element_bytes,
                                            Algorithm requested) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (size_ == 1) return requested == Algorithm::kDefault ? algorithm_ : requested;
  return resolve(requested, count * element_bytes, std::max<size_t>(count, size_), true);
}

Algorithm Communicator::allgather_algorithm(size_t count, size_t element_bytes,
                                            Algorithm requested) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (size_ == 1) return requested == Algorithm::kDefault ? algorithm_ : requested;
  return resolve(requested, count * element_bytes * size_, count > 0 ? size_ : 0, true);
}

void Communicator::close() {
  // The blob service first: it must not wait behind a collective in flight.
  stop_blob_service();
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  if (transport_) transport_->shutdown();
}

MessageHeader Communicator::next_header(CollectiveKind kind, uint64_t count, DataType dtype,
                                        uint32_t op, Algorithm algorithm, uint64_t shape_hash) {
  MessageHeader header;
  header.kind = static_cast<uint32_t>(kind);
  header.sequence = sequence_++;
  header.count = count;
  header.shape_hash = shape_hash;
  header.dtype = static_cast<uint32_t>(dtype);
  header.op = op;
  header.algorithm = static_cast<uint32_t>(algorithm);
  return header;
}

int Communicator::spin_for(size_t bytes) const {
  // A latency-bound call's answer often comes back within microseconds; a
  // bandwidth-bound call's next bytes within a socket buffer's drain, which a
  // sleep and wake-up would add to every block (see Tunables).
  return bytes < tunables_.auto_ring_min_bytes ? tunables_.spin_us : tunables_.spin_bandwidth_us;
}

Algorithm Communicator::resolve(Algorithm requested, size_t bytes, size_t count,
                                bool hierarchical) const {
  if (requested == Algorithm::kDefault) requested = algorithm_;
  // "hierarchical" and "auto" reduce inside each node first when the group
  // spans nodes with several ranks each (and the buffer is big enough for a
  // ring); otherwise "hierarchical" is the flat ring.
  const bool layered =
      hierarchical && layout_.hierarchical() && count >= static_cast<size_t>(size_);
  if (layered && requested == Algorithm::kHierarchical) return Algorithm::kHierarchical;
  if (layered && requested == Algorithm::kAuto && bytes >= tunables_.auto_ring_min_bytes) {
    return Algorithm::kHierarchical;
  }
  return choose_algorithm(requested, bytes, count, size_, tunables_);
}

void Communicator::reduce_locked(void* data, size_t count, DataType dtype, ReduceOp op,
                                 Algorithm algorithm, const MessageHeader& header) {
  if (algorithm == Algorithm::kRing || algorithm == Algorithm::kHierarchical) {
    RingOptions ring;
    ring.data = data;
    ring.count = count;
    ring.dtype = dtype;
    ring.op = op;
    ring.header = header;
    ring.timeout = timeout_;
    ring.block_bytes = tunables_.block_bytes;
    ring.scratch = &scratch_;
    ring.spin_us = spin_for(count * element_size(dtype));
    if (algorithm == Algorithm::kHierarchical) {
      hierarchical_allreduce(*transport_, layout_, ring, tunables_.hierarchical_chunk_bytes,
                             tunables_.hierarchical_leader);
    } else {
      ordered_ring_allreduce(ring);
    }
    return;
  }
  RootedOptions rooted;
  rooted.data = data;
  rooted.count = count;
  rooted.dtype = dtype;
  rooted.op = op;
  rooted.header = header;
  rooted.timeout = timeout_;
  rooted.block_bytes = tunables_.block_bytes;
  rooted.scratch = &child_scratch_;
  rooted.spin_us = spin_for(count * element_size(dtype));
  if (algorithm == Algorithm::kStar) {
    star_allreduce(*transport_, rooted);
  } else if (ring_order_.empty()) {
    tree_allreduce(*transport_, rooted);
  } else {
    // The tree in the routed order: its root is order[0] and the last ranks of the
    // order are leaves, whose links carry the buffer once each way (a slow node's place).
    TransportView view(*transport_, ring_order_);
    tree_allreduce(view, rooted);
  }
}

void Communicator::allreduce(void* data, size_t count, DataType dtype, ReduceOp op,
                             Algorithm algorithm, uint64_t shape_hash) {
  // Validate before any byte moves: a bad argument must leave the group usable.
  check_op_supported(dtype, op);
  check_data(data, count, "allreduce: data");
  run("allreduce", [&] {
    if (size_ == 1) return;  // already the result (mean of one value is itself)
    const Algorithm chosen = resolve(algorithm, count * element_size(dtype), count, true);
    const MessageHeader header = next_header(CollectiveKind::kAllreduce, count, dtype,
                                             static_cast<uint32_t>(op), chosen, shape_hash);
    reduce_locked(data, count, dtype, op, chosen, header);
  });
}

void Communicator::broadcast(void* data, size_t count, DataType dtype, int root,
                             Algorithm algorithm, uint64_t shape_hash) {
  (void)element_size(dtype);
  check_data(data, count, "broadcast: data");
  if (root < 0 || root >= size_) {
    throw InvalidArgumentError("broadcast: root " + std::to_string(root) +
                               " is out of range: use 0.." + std::to_string(size_ - 1));
  }
  run("broadcast", [&] {
    if (size_ == 1) return;
    // Any count suits a chain, so "ring" (a pipelined chain from the root)
    // never falls back here.
    const Algorithm chosen =
        resolve(algorithm, count * element_size(dtype), std::max<size_t>(count, size_), true);
    MessageHeader header =
        next_header(CollectiveKind::kBroadcast, count, dtype, 0, chosen, shape_hash);
    header.root = static_cast<uint32_t>(root);
    RootedOptions rooted;
    rooted.data = data;
    rooted.count = count;
    rooted.dtype = dtype;
    rooted.reduce = false;
    rooted.broadcast = true;
    rooted.topology = chosen == Algorithm::kHierarchical
                          ? hierarchical_broadcast_tree(layout_, rank_, root)
                          : topology_for(chosen, rank_, size_, root);
    rooted.header = header;
    rooted.timeout = timeout_;
    rooted.block_bytes = tunables_.block_bytes;
    rooted.spin_us = spin_for(count * element_size(dtype));
    rooted_collective(*transport_, rooted);
  });
}

void Communicator::allgather(const void* input, size_t count, DataType dtype, void* output,
                             Algorithm algorithm, uint64_t shape_hash) {
  const size_t bytes = count * element_size(dtype);
  check_data(input, count, "allgather: input");
  check_data(output, count, "allgather: output");
  run("allgather", [&] {
    char* out = static_cast<char*>(output);
    if (bytes > 0 && out + rank_ * bytes != static_cast<const char*>(input)) {
      std::memmove(out + rank_ * bytes, input, bytes);
    }
    if (size_ == 1) return;
    // The ring needs a non-empty block per rank to check every call.
    const Algorithm chosen = resolve(algorithm, bytes * size_, count > 0 ? size_ : 0, true);
    const MessageHeader header =
        next_header(CollectiveKind::kAllgather, count, dtype, 0, chosen, shape_hash);
    if (chosen == Algorithm::kRing || chosen == Algorithm::kHierarchical) {
      RingOptions ring;
      ring.data = output;
      ring.count = count * size_;
      ring.row_elements = count;
      ring.dtype = dtype;
      ring.header = header;
      ring.timeout = timeout_;
      ring.block_bytes = tunables_.block_bytes;
      ring.scratch = &scratch_;
      ring.spin_us = spin_for(bytes * size_);
      if (chosen == Algorithm::kHierarchical) {
        hierarchical_allgather(*transport_, layout_, ring, &work_,
                               tunables_.hierarchical_chunk_bytes, tunables_.hierarchical_leader);
      } else {
        ring_allgather(*transport_, ring);
      }
      return;
    }
    // Tree and star: every rank contributes its block into zeros and the
    // bytes are OR-ed together, which reproduces each block exactly; small
    // buffers are all these algorithms are chosen for, so moving n blocks
    // per link costs little.
    for (int r = 0; r < size_; ++r) {
      if (r != rank_) std::memset(out + r * bytes, 0, bytes);
    }
    reduce_locked(output, bytes * size_, DataType::kUint8, ReduceOp::kBitOr, chosen, header);
  });
}

void Communicator::reduce_scatter(const void* input, size_t rows, size_t row_elements,
                                  DataType dtype, ReduceOp op, void* output, Algorithm algorithm,
                                  uint64_t shape_hash) {
  check_op_supported(dtype, op);
  const size_t count = rows * row_elements;
  const size_t row_bytes = row_elements * element_size(dtype);
  check_data(input, count, "reduce_scatter: input");
  const RowRange own = segment_rows(rows, size_, rank_);
  check_data(output, own.rows * row_elements, "reduce_scatter: output");
  run("reduce_scatter", [&] {
    if (size_ == 1) {
      if (count > 0) std::memmove(output, input, count * element_size(dtype));
      return;
    }
    // The input stays untouched: the algorithms work on a copy.
    work_.resize(count * element_size(dtype));
    if (count > 0) std::memcpy(work_.data(), input, work_.size());
    const Algorithm chosen = resolve(algorithm, work_.size(), row_elements > 0 ? rows : 0);
    const MessageHeader header = next_header(CollectiveKind::kReduceScatter, count, dtype,
                                             static_cast<uint32_t>(op), chosen, shape_hash);
    if (chosen == Algorithm::kRing) {
      RingOptions ring;
      ring.data = work_.data();
      ring.count = count;
      ring.row_elements = std::max<size_t>(row_elements, 1);
      ring.dtype = dtype;
      ring.op = op;
      ring.header = header;
      ring.timeout = timeout_;
      ring.block_bytes = tunables_.block_bytes;
      ring.scratch = &scratch_;
      ring.spin_us = spin_for(work_.size());
      ring_reduce_scatter(*transport_, ring);
    } else {
      // Small buffers: a full allreduce on the tree or star, then keep ours.
      reduce_locked(work_.data(), count, dtype, op, chosen, header);
    }
    if (own.rows > 0 && row_bytes > 0) {
      std::memcpy(output, work_.data() + own.first * row_bytes, own.rows * row_bytes);
    }
  });
}

bool Communicator::consensus_locked(const void* data, size_t bytes) {
  if (size_ == 1) return true;
  // Two allreduces on the tree (which checks every rank's call even for an
  // empty buffer): first max(length) and max(-length), which differ unless
  // every length is equal; then max over every byte and over its complement,
  // i.e. max and ~min, which agree exactly where every rank has the same
  // byte. Exact, unlike comparing hashes, and the same answer everywhere.
  int64_t lengths[2] = {static_cast<int64_t>(bytes), -static_cast<int64_t>(bytes)};
  MessageHeader header = next_header(CollectiveKind::kConsensus, 2, DataType::kInt64,
                                     static_cast<uint32_t>(ReduceOp::kMax), Algorithm::kTree, 0);
  reduce_locked(lengths, 2, DataType::kInt64, ReduceOp::kMax, Algorithm::kTree, header);
  if (lengths[0] != -lengths[1]) return false;
  std::vector<uint8_t> both(2 * bytes);
  if (bytes > 0) std::memcpy(both.data(), data, bytes);
  for (size_t i = 0; i < bytes; ++i) both[bytes + i] = static_cast<uint8_t>(~both[i]);
  header = next_header(CollectiveKind::kConsensus, both.size(), DataType::kUint8,
                       static_cast<uint32_t>(ReduceOp::kMax), Algorithm::kTree, 0);
  reduce_locked(both.data(), both.size(), DataType::kUint8, ReduceOp::kMax, Algorithm::kTree,
                header);
  for (size_t i = 0; i < bytes; ++i) {
    if (both[i] != static_cast<uint8_t>(~both[bytes + i])) return false;
  }
  return true;
}

bool Communicator::consensus(const void* data, size_t bytes) {
  check_data(data, bytes, "consensus: data");
  return run("consensus", [&] { return consensus_locked(data, bytes); });
}

void Communicator::set_algorithm(Algorithm algorithm) {
  if (algorithm == Algorithm::kDefault) {
    throw InvalidArgumentError("set_algorithm needs an algorithm");
  }
  const std::string name = name_of(algorithm);
  const bool agreed = run("set_algorithm", [&] {
    const bool same = consensus_locked(name.data(), name.size());
    if (same) algorithm_ = algorithm;
    return same;
  });
  if (!agreed) {
    throw InvalidArgumentError("set_algorithm on rank " + std::to_string(rank_) +
                               ": the ranks asked for different " + "algorithms (this rank: \"" +
                               name + "\"); the algorithm is unchanged");
  }
}

void Communicator::ordered_ring_allreduce(const RingOptions& ring) {
  if (ring_order_.empty()) {
    ring_allreduce(*transport_, ring);
    return;
  }
  TransportView view(*transport_, ring_order_);
  ring_allreduce(view, ring);
}

void Communicator::set_ring_order(const std::vector<int>& order) {
  std::vector<int> seen(static_cast<size_t>(size_), 0);
  bool identity = true;
  for (size_t i = 0; i < order.size(); ++i) {
    const int r = order[i];
    if (r < 0 || r >= size_ || seen[static_cast<size_t>(r)]++) {
      throw InvalidArgumentError("set_ring_order: the order must name every rank 0.." +
                                 std::to_string(size_ - 1) + " once");
    }
    identity = identity && r == static_cast<int>(i);
  }
  if (!order.empty() && order.size() != static_cast<size_t>(size_)) {
    throw InvalidArgumentError("set_ring_order: the order must name every rank 0.." +
                               std::to_string(size_ - 1) + " once");
  }
  std::string text = "ring_order=";
  for (int r : order) text += std::to_string(r) + ",";
  if (identity) text = "ring_order=";
  const bool agreed = run("set_ring_order", [&] {
    const bool same = consensus_locked(text.data(), text.size());
    if (same) ring_order_ = identity ? std::vector<int>() : order;
    return same;
  });
  if (!agreed) {
    throw InvalidArgumentError("set_ring_order on rank " + std::to_string(rank_) +
                               ": the ranks asked for different orders (this rank: " + text +
                               "); the order is unchanged");
  }
}

std::vector<int> Communicator::ring_order() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!ring_order_.empty()) return ring_order_;
  std::vector<int> order(static_cast<size_t>(size_));
  for (int r = 0; r < size_; ++r) order[static_cast<size_t>(r)] = r;
  return order;
}

void Communicator::grouped_allreduce(const std::vector<Buffer>& buffers, ReduceOp op,
                                     Algorithm algorithm) {
  for (const Buffer& buffer : buffers) {
    check_op_supported(buffer.dtype, op);
    check_data(buffer.data, buffer.count, "grouped_allreduce: an array");
  }
  // Dtypes in order of first appearance: the same order on every rank.
  std::vector<DataType> dtypes;
  for (const Buffer& buffer : buffers) {
    if (std::find(dtypes.begin(), dtypes.end(), buffer.dtype) == dtypes.end()) {
      dtypes.push_back(buffer.dtype);
    }
  }
  run("grouped_allreduce", [&] {
    if (size_ == 1) return;
    for (DataType dtype : dtypes) {
      const size_t item = element_size(dtype);
      size_t total = 0;
      std::vector<size_t> counts;
      for (const Buffer& buffer : buffers) {
        if (buffer.dtype != dtype) continue;
        counts.push_back(buffer.count);
        total += buffer.count;
      }
      // The list of array sizes goes into the header, so ranks that pass
      // differently cut lists of the same total size are caught too.
      const uint64_t layout = hash_shape(counts);
      work_.resize(total * item);
      size_t offset = 0;
      for (const Buffer& buffer : buffers) {
        if (buffer.dtype != dtype || buffer.count == 0) continue;
        std::memcpy(work_.data() + offset, buffer.data, buffer.count * item);
        offset += buffer.count * item;
      }
      const Algorithm chosen = resolve(algorithm, total * item, total, true);
      const MessageHeader header = next_header(CollectiveKind::kAllreduce, total, dtype,
                                               static_cast<uint32_t>(op), chosen, layout);
      reduce_locked(work_.data(), total, dtype, op, chosen, header);
      offset = 0;
      for (const Buffer& buffer : buffers) {
        if (buffer.dtype != dtype || buffer.count == 0) continue;
        std::memcpy(buffer.data, work_.data() + offset, buffer.count * item);
        offset += buffer.count * item;
      }
    }
  });
}

void Communicator::barrier() {
  run("barrier", [&] {
    if (size_ == 1) return;
    ring_barrier(*transport_, BarrierOptions{sequence_++, timeout_, tunables_.spin_us});
  });
}

}  // namespace adaptrain::collective
