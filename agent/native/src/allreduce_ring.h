// Bandwidth-optimal ring allreduce; see allreduce_ring.cc for the algorithm.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "transport.h"
#include "types.h"

namespace adaptrain::collective {

struct RingAllreduceOptions {
  void* data = nullptr;  // reduced in place
  size_t count = 0;      // elements
  DataType dtype = DataType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  uint64_t sequence = 0;                     // for the header check (protocol.h)
  std::chrono::milliseconds timeout{60000};  // longest time without progress
  size_t block_bytes = 256 << 10;            // pipelining unit (COLLECTIVE_RING_BLOCK_BYTES)
  std::vector<char>* scratch = nullptr;      // receive buffer, reused between calls
};

// Needs connections to rank-1 and rank+1. Throws IoError / TimeoutError; the
// buffer contents are unspecified after a failure.
void ring_allreduce(Transport& transport, const RingAllreduceOptions& options);

}  // namespace adaptrain::collective
