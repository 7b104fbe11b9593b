// Tunables read once from COLLECTIVE_* environment variables (in the manner
// of NCCL_PARAM): they are process-wide, read on first use, and a bad value
// fails the first communicator with a message naming the variable.
//
// Every rank of a group must see the same values of the COLLECTIVE_AUTO_*
// variables, because they decide which algorithm runs; a communicator checks
// that when it forms (see Communicator's constructor).
#pragma once

#include <cstddef>
#include <functional>
#include <string>

namespace adaptrain::collective {

// COLLECTIVE_LOCAL_TRANSPORT: how ranks whose peer addresses have the same
// host part exchange data (transport/shm/transport_shm.h).
enum class LocalTransport {
  kAuto,  // shared memory where the segment can be set up, else TCP
  kShm,   // shared memory; failing to set it up is an error
  kTcp,   // always TCP loopback
};
const char* name_of(LocalTransport transport);

struct Tunables {
  // COLLECTIVE_RING_BLOCK_BYTES: the pipelining unit of every algorithm.
  // Received data is reduced and made available for forwarding in pieces of
  // at most this size, so the next hop starts sending before a whole segment
  // has arrived. Smaller blocks overlap better but cost more system calls.
  // Default 256 KiB.
  size_t block_bytes;
  // COLLECTIVE_SOCKET_BUFFER_BYTES: SO_SNDBUF/SO_RCVBUF for every connection.
  // 0 leaves the kernel's autotuning on. Default 4 MiB (the kernel caps it at
  // net.core.{r,w}mem_max).
  size_t socket_buffer_bytes;
  // COLLECTIVE_CONNECT_RETRY_MS: longest pause between connection attempts to
  // a peer that is not listening yet. Default 200 ms.
  int connect_retry_ms;
  // COLLECTIVE_SPIN_US: before sleeping in poll(), a latency-bound call
  // (a buffer below auto_ring_min_bytes, or a barrier) polls without sleeping
  // for up to this many microseconds. A peer's answer to a small message often
  // arrives within tens of microseconds, and being woken from sleep costs a
  // scheduler round trip (much more on a busy machine). Bandwidth-bound calls
  // spin for spin_bandwidth_us instead. 0 never spins. Default 50.
  int spin_us;
  // COLLECTIVE_SPIN_BANDWIDTH_US: how long a bandwidth-bound call (a buffer
  // of at least auto_ring_min_bytes) polls without sleeping when neither
  // direction can move. Every round of any spin that polls sockets ends with
  // sched_yield(), so with more ranks than cores the rank being waited for
  // gets the core at once instead of the spinner burning it. On this 2-core
  // machine 2 ms lifted TCP allreduce of 4 MiB by 10-17 % at 2 and 4 ranks
  // and left 32 MiB where it was (docs/native.md); a spin that does not yield
  // halved the 4-rank figure. 0 always sleeps. Default 2000.
  int spin_bandwidth_us;
  // COLLECTIVE_AUTO_RING_MIN_BYTES: algorithm="auto" uses the ring for
  // buffers of at least this many bytes (bandwidth-bound), and a latency-bound
  // algorithm below. Default 512 KiB: on loopback the ring overtook the tree
  // and star at about 256 KiB with 2 ranks and 1 MiB with 4 (docs/native.md).
  size_t auto_ring_min_bytes;
  // COLLECTIVE_AUTO_STAR_MAX_RANKS: below the ring threshold, "auto" uses the
  // star (2 hops, but the root handles every message) up to this many ranks
  // and the binary tree (2 log2 n hops, load spread) above. Default 4.
  size_t auto_star_max_ranks;
  // COLLECTIVE_LOCAL_TRANSPORT: auto | shm | tcp (see LocalTransport).
  // Default auto. Must match across ranks (checked like COLLECTIVE_AUTO_*).
  LocalTransport local_transport;
  // COLLECTIVE_SHM_BUFFER_BYTES: the ring of each direction of each
  // shared-memory pair, a power of two from 64 KiB to 1 GiB. The lower rank
  // of a pair creates the segment, so its value counts. Default 256 KiB: a
  // 1 MiB ring spilled the two ranks' working set out of a 2 MiB L2 when the
  // scheduler put both on one core (docs/native.md, Benchmarks).
  size_t shm_buffer_bytes;
  // COLLECTIVE_HIERARCHICAL_CHUNK_BYTES: the hierarchical allreduce cuts the
  // buffer into chunks of about this size and pipelines its phases over them
  // (the rings between nodes reduce one chunk while each node scatters the
  // next and gathers the previous one). 0 = one chunk, the phases one after
  // another. Default 1 MiB. Must match across ranks (checked like
  // COLLECTIVE_AUTO_*).
  size_t hierarchical_chunk_bytes;
  // COLLECTIVE_HIERARCHICAL_SCHEME: shards | leader. How the hierarchical
  // allreduce (and all-gather) crosses between equal nodes: "shards" (default) has every rank
  // of a node reduce its 1/K of the buffer with its peers on the other nodes
  // (K rings, as NCCL's); "leader" has the node allreduce over shared memory,
  // one rank per node (the leader) allreduce the whole buffer across nodes,
  // and the leader share the result inside its node (Horovod's hierarchical
  // scheme). Must match across ranks (checked like COLLECTIVE_AUTO_*).
  bool hierarchical_leader;

  // The values as "NAME=value" lines, for the cross-rank agreement check.
  std::string describe() const;
};

// Parses tunables from `lookup(name)` (nullptr or "" when unset). Throws
// InvalidArgumentError naming the variable when a value does not parse.
Tunables parse_tunables(const std::function<const char*(const char*)>& lookup);

// Accepts "262144", "256K", "4M", "1G" within [min_value, max_value].
size_t parse_byte_count(const char* name, const char* text, size_t fallback, size_t min_value,
                        size_t max_value);

// The process's tunables, from the environment on first use.
const Tunables& tunables();

}  // namespace adaptrain::collective
