// Topology-aware allreduce for several ranks per node: see allreduce_hierarchical.cc.
#pragma once

#include <string>
#include <vector>

#include "collectives/allreduce_ring.h"
#include "collectives/segments.h"
#include "transport/transport.h"

namespace adaptrain::collective {

// Which ranks share a node. A node is a host as written in the peer list
// ("10.0.0.3:41002" and "10.0.0.3:41003" are one node); nodes are numbered in
// order of their first rank.
struct NodeLayout {
  std::vector<int> node_of;      // per rank
  std::vector<int> local_index;  // per rank: its place among its node's ranks
  int nodes = 0;
  int per_node = 0;                // ranks per node when every node has as many, else 0
  int min_per_node = 0;            // the fewest ranks any node has
  int max_per_node = 0;            // the most
  std::vector<int> local_members;  // this rank's node, in rank order
  std::vector<int> cross_members;  // ranks with this rank's local index, in node order
  // More than one node, and some node with several ranks.
  bool hierarchical() const { return nodes > 1 && max_per_node > 1; }
};

NodeLayout node_layout(const std::vector<std::string>& hosts, int rank);

// Allreduce in three phases (options as for ring_allreduce; the header's
// `root` field carries the phase number 1-3 on the wire):
//   1. reduce-scatter among the ranks of each node (shared memory): local
//      rank i ends with the node's sum of segment i;
//   2. allreduce of segment i among the ranks with local index i, one per
//      node (the inter-node links; every rank carries 1/K of the buffer);
//   3. all-gather among the ranks of each node.
// The buffer is cut into chunks of about `chunk_bytes`
// (COLLECTIVE_HIERARCHICAL_CHUNK_BYTES; 0 = one chunk) that go through the
// phases as a pipeline: while the rings between nodes reduce chunk i, the
// node scatters chunk i+1 and gathers chunk i-1 over shared memory.
// Nodes with unequal numbers of ranks (a node that lost one): with M the
// fewest ranks any node has, a rank whose local index i is M or more first
// folds its buffer into local rank i mod M (a 2-rank ring allreduce over
// shared memory), sits out the three phases, which run on local ranks 0..M-1
// of every node, and gets the result back from the same partner (a copy). A
// mean is then a sum divided by the group size at the end, on every rank.
// Needs layout.hierarchical() and options.count >= the number of ranks.
// With `leader` (COLLECTIVE_HIERARCHICAL_SCHEME=leader) equal nodes cross
// with one rank each instead: the node allreduces over shared memory, local
// rank 0 of every node allreduces the whole buffer with the other nodes'
// local rank 0, then shares the result inside its node (unequal nodes fold
// as above either way).
void hierarchical_allreduce(Transport& transport, const NodeLayout& layout,
                            const RingOptions& options, size_t chunk_bytes, bool leader = false);

// How many chunks hierarchical_allreduce cuts `rows` rows into: about one per
// chunk_bytes, at most one per `ranks` rows (no ring step may be empty) and
// below kMaxHierarchicalChunks; at least 1.
constexpr size_t kMaxHierarchicalChunks = 1024;
size_t hierarchical_chunks(size_t rows, size_t row_bytes, size_t ranks, size_t chunk_bytes);

// Hierarchical broadcast: this rank's place in a tree of chains rooted at
// `root`. One leader per node (the root on its node, local rank 0 on the
// others) forms a chain across the nodes, starting at the root's node; inside
// each node a chain runs from its leader through the node's other ranks
// (shared memory). Every inter-node link carries the buffer once, whatever
// the rank order (a flat chain or binary tree over interleaved ranks crosses
// between nodes many times). Run with rooted_collective (pipelined in
// blocks, so the chains across and inside nodes work at once). Any layout,
// unequal nodes included.
TreeTopology hierarchical_broadcast_tree(const NodeLayout& layout, int rank, int root);

// Hierarchical all-gather. `options`: data = the output, `size` blocks of
// row_elements each, this rank's block already in place at rank; count =
// size * row_elements.
// Equal nodes (K ranks each), as NCCL's rings do: the ranks with local index
// i run a ring all-gather of their blocks across the nodes (each of the
// node's K connections carries 1/K of its traffic), then the node's ranks
// all-gather those N-block rows over shared memory; both in chunks of about
// `chunk_bytes` of output (COLLECTIVE_HIERARCHICAL_CHUNK_BYTES), the node's
// ring of one chunk beside the rings across nodes of the next. Blocks are
// gathered in `work` and copied to their places at the end.
// Unequal nodes, and equal ones with `leader` (COLLECTIVE_HIERARCHICAL_SCHEME=
// leader), one leader per node (the header's root field carries the phase):
//   1. all-gather of the node's blocks among its ranks (shared memory);
//   2. ring all-gather among one leader per node (local rank 0), each
//      contributing its whole node's blocks: a node's link carries its own
//      blocks out and the other nodes' in, once each;
//   3. the leader broadcasts the other nodes' blocks down a chain of its
//      node's ranks (shared memory).
// Ranks not numbered node by node gather in node order in `work` and are
// copied to their places at the end. Either way any rank order works; needs
// layout.hierarchical() and row_elements > 0.
void hierarchical_allgather(Transport& transport, const NodeLayout& layout,
                            const RingOptions& options, std::vector<char>* work, size_t chunk_bytes,
                            bool leader = false);

}  // namespace adaptrain::collective
