// Bandwidth-optimal ring algorithms: allreduce, reduce-scatter and all-gather
// share one pipelined engine; see allreduce_ring.cc.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "collectives/protocol.h"
#include "core/types.h"
#include "transport/transport.h"

namespace adaptrain::collective {

struct RingOptions {
  void* data = nullptr;  // worked on in place
  size_t count = 0;      // elements
  // Segments are cut in whole rows of this many elements (numpy.array_split
  // along axis 0); 1 cuts anywhere.
  size_t row_elements = 1;
  DataType dtype = DataType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  MessageHeader header;                      // sent to the next rank, expected from the previous
  std::chrono::milliseconds timeout{60000};  // longest time without progress
  size_t block_bytes = 256 << 10;            // pipelining unit (COLLECTIVE_RING_BLOCK_BYTES)
  std::vector<char>* scratch = nullptr;      // receive buffer, reused between calls
  int spin_us = 0;                           // see Transport::wait
  // Where each rank's segment ends, in rows (cumulative, one per rank, the
  // last equal to the row count); null: segment_rows cuts them. The
  // hierarchical all-gather gives each node leader its whole node's blocks.
  const std::vector<size_t>* segment_ends = nullptr;
};

// Needs connections to rank-1 and rank+1. Throw IoError / TimeoutError; the
// buffer contents are unspecified after a failure.

// Every rank ends with the reduction of all ranks' buffers, bit-identical.
void ring_allreduce(Transport& transport, const RingOptions& options);
// Rank r ends with the reduction of segment r (segment_rows) in place; the
// rest of the buffer is left partially reduced.
void ring_reduce_scatter(Transport& transport, const RingOptions& options);
// The buffer holds `size` equal segments; rank r's own is segment r. Every
// rank ends with every segment.
void ring_allgather(Transport& transport, const RingOptions& options);

// One of the three ring collectives driven by its caller, so that several can
// run at once on disjoint connections (the hierarchical allreduce overlaps a
// node's shared-memory rings with the rings between nodes). `options` (and its
// scratch buffer, which must not be shared with another live task) must
// outlive the task. The caller loops: progress(); if nothing moved, collect
// add_wait_requests() of every live task, Transport::wait on them, then
// check_strays(). The caller keeps the inactivity deadline.
enum class RingKind { kAllreduce, kReduceScatter, kAllgather };
class RingEngine;
class RingTask {
 public:
  RingTask(Transport& transport, const RingOptions& options, RingKind kind);
  ~RingTask();
  RingTask(RingTask&&) noexcept;
  RingTask& operator=(RingTask&&) noexcept;

  bool progress();  // moves what can move without blocking; true when anything moved
  bool done() const;
  void add_wait_requests(std::vector<WaitRequest>* requests) const;
  void check_strays();  // throws IoError for a stray header of this call (see protocol.h)

 private:
  std::unique_ptr<RingEngine> engine_;  // null for a group of one: nothing to do
};

}  // namespace adaptrain::collective
