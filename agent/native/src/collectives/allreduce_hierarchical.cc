// Hierarchical allreduce: reduce inside each node first, so that the slow
// links between nodes carry each byte as few times as possible.
//
// With N nodes of K ranks and a buffer of S bytes, a flat ring ordered by node
// sends 2(n-1)/n * S over each of its links, and the link that leaves a node
// is one of them: about 2S for large n. Here each of the K ranks of a node
// owns 1/K of the buffer after phase 1, and phase 2 is K independent rings of
// N ranks, one per local index, each moving 2(N-1)/N * S/K. A node's links to
// other nodes therefore carry 2(N-1)/N * S in all, split over K connections
// (as NCCL's rings do); for N = 2 that is S instead of 1.75 S for a flat
// ring of 8. Phases 1 and 3 stay inside the node, on shared memory.
//
// Every phase is the ordinary pipelined ring (allreduce_ring.cc) on a
// TransportView of the ranks taking part, so timeouts, header checks and the
// stray-header watch behave as in the flat ring. The phases are told apart on
// the wire by the header's root field (1, 2, 3), so a rank that mixed up the
// phases fails with both calls named instead of reducing the wrong bytes.
//
// Results are bit-identical on every rank: after phase 2 every rank with
// local index i holds the same bits of segment i (the ring's guarantee), and
// phase 3 only copies. Mean divides by K in phase 1 and by N in phase 2, which
// is the mean over all K*N ranks because every node has K of them.
#include "collectives/allreduce_hierarchical.h"

#include <algorithm>
#include <map>

#include "collectives/segments.h"
#include "core/errors.h"
#include "core/types.h"
#include "transport/transport_view.h"

namespace adaptrain::collective {

NodeLayout node_layout(const std::vector<std::string>& hosts, int rank) {
  NodeLayout layout;
  std::map<std::string, int> node_ids;
  std::vector<int> counts;
  for (const std::string& host : hosts) {
    auto found = node_ids.find(host);
    if (found == node_ids.end()) {
      found = node_ids.emplace(host, static_cast<int>(counts.size())).first;
      counts.push_back(0);
    }
    layout.node_of.push_back(found->second);
    layout.local_index.push_back(counts[static_cast<size_t>(found->second)]++);
  }
  layout.nodes = static_cast<int>(counts.size());
  const bool uniform = !counts.empty() && std::all_of(counts.begin(), counts.end(), [&](int count) {
    return count == counts.front();
  });
  layout.per_node = uniform ? counts.front() : 0;
  if (rank < 0 || rank >= static_cast<int>(hosts.size())) return layout;
  const int node = layout.node_of[static_cast<size_t>(rank)];
  const int index = layout.local_index[static_cast<size_t>(rank)];
  // Node order is order of first rank, so walking the ranks in order lists
  // the cross members in node order.
  for (int r = 0; r < static_cast<int>(hosts.size()); ++r) {
    if (layout.node_of[static_cast<size_t>(r)] == node) layout.local_members.push_back(r);
    if (layout.local_index[static_cast<size_t>(r)] == index) layout.cross_members.push_back(r);
  }
  return layout;
}

void hierarchical_allreduce(Transport& transport, const NodeLayout& layout,
                            const RingOptions& options) {
  if (!layout.hierarchical() || layout.local_members.empty() ||
      options.count < static_cast<size_t>(transport.size())) {
    throw InvalidArgumentError(
        "the hierarchical allreduce needs several nodes with the same number of ranks and at "
        "least one element per rank (internal error: the communicator checks this)");
  }
  TransportView local(transport, layout.local_members);
  TransportView cross(transport, layout.cross_members);

  RingOptions phase = options;
  phase.header.root = 1;
  ring_reduce_scatter(local, phase);

  // The segment this rank owns now: the ring cuts whole rows, as here.
  const size_t rows = options.count / options.row_elements;
  const size_t row_bytes = options.row_elements * element_size(options.dtype);
  const RowRange own =
      segment_rows(rows, static_cast<size_t>(local.size()), static_cast<size_t>(local.rank()));
  RingOptions segment = options;
  segment.data = static_cast<char*>(options.data) + own.first * row_bytes;
  segment.count = own.rows * options.row_elements;
  segment.header.root = 2;
  // count >= K*N elements (rows of one element, as allreduce cuts them)
  // gives every segment at least N elements: no ring step is empty.
  ring_allreduce(cross, segment);

  phase.header.root = 3;
  ring_allgather(local, phase);
}

}  // namespace adaptrain::collective
