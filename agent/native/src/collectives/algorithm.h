// Which algorithm runs a collective, and how "auto" chooses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/tunables.h"

namespace adaptrain::collective {

// kDefault means "whatever the communicator is set to"; only kRing, kTree,
// kStar and kHierarchical ever run (and travel in message headers).
// kHierarchical needs to know which ranks share a node, which only the
// communicator does (allreduce_hierarchical.h): choose_algorithm treats it as
// the ring.
enum class Algorithm : uint32_t {
  kDefault = 0,
  kAuto = 1,
  kRing = 2,
  kTree = 3,
  kStar = 4,
  kHierarchical = 5,
};

const char* name_of(Algorithm algorithm);
// "ring" -> kRing, also "auto"; throws InvalidArgumentError listing the names.
Algorithm parse_algorithm(const std::string& name);

// The algorithm that runs an allreduce of `count` elements (`bytes` in all)
// over `size` ranks when `requested` was asked for (never kDefault):
//   auto   ring when bytes >= auto_ring_min_bytes and every rank gets a
//          non-empty segment; otherwise star up to auto_star_max_ranks ranks
//          and the binary tree above.
//   ring   the ring, except that a buffer with fewer elements than ranks goes
//          to the tree: empty segments make the ring pointless, and the tree
//          checks every rank's call before anyone finishes.
//   tree, star   as asked.
Algorithm choose_algorithm(Algorithm requested, size_t bytes, size_t count, int size,
                           const Tunables& tunables);

}  // namespace adaptrain::collective
