// Latency-oriented algorithms over a rooted tree: the binary-tree allreduce
// (here), the star allreduce (allreduce_star.h), and broadcast down a tree,
// a star or a chain. One pipelined engine runs them all; see
// allreduce_tree.cc.
#pragma once

#include <chrono>
#include <cstddef>
#include <vector>

#include "collectives/protocol.h"
#include "collectives/segments.h"
#include "core/types.h"
#include "transport/transport.h"

namespace adaptrain::collective {

struct RootedOptions {
  void* data = nullptr;  // worked on in place
  size_t count = 0;      // elements
  DataType dtype = DataType::kFloat32;
  ReduceOp op = ReduceOp::kSum;
  bool reduce = true;                        // up: every rank's buffer is reduced into the root's
  bool broadcast = true;                     // down: the root's buffer is copied to every rank
  TreeTopology topology;                     // this rank's parent and children
  MessageHeader header;                      // sent and expected on every link
  std::chrono::milliseconds timeout{60000};  // longest time without progress
  size_t block_bytes = 256 << 10;            // pipelining unit
  std::vector<std::vector<char>>* scratch = nullptr;  // one receive buffer per child, reused
  int spin_us = 0;                                    // see Transport::wait
};

// Runs one collective over options.topology. Needs a connection to the
// parent and to every child. Throws IoError / TimeoutError; the buffer
// contents are unspecified after a failure.
void rooted_collective(Transport& transport, const RootedOptions& options);

// Allreduce over binary_tree(rank, size, 0); topology in options is ignored.
void tree_allreduce(Transport& transport, RootedOptions options);

}  // namespace adaptrain::collective
