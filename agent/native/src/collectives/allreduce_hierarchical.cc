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
// TransportView of the ranks taking part, so header checks and the
// stray-header watch behave as in the flat ring. The buffer is cut into
// chunks and the phases run as a pipeline (RingTask: the node's ring and the
// ring between nodes progress in one loop). The rings are told apart on the
// wire by the header's root field (phase, chunk, chunk count), so a rank that
// mixed them up fails with both calls named instead of reducing wrong bytes.
// Unequal nodes fold their extra ranks into partners (hierarchical_allreduce).
//
// Results are bit-identical on every rank: after phase 2 every rank with
// local index i holds the same bits of segment i (the ring's guarantee), and
// phase 3 only copies. Mean divides by K in phase 1 and by N in phase 2, which
// is the mean over all K*N ranks because every node has K of them.
#include "collectives/allreduce_hierarchical.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <utility>

#include "collectives/allreduce_tree.h"
#include "collectives/reduce.h"
#include "collectives/segments.h"
#include "core/deadline.h"
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
  if (!counts.empty()) {
    layout.min_per_node = *std::min_element(counts.begin(), counts.end());
    layout.max_per_node = *std::max_element(counts.begin(), counts.end());
  }
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

namespace {

// The header's root field of one ring of the pipeline: phase (1-3), chunk and
// the number of chunks, so that ranks that cut the buffer differently fail
// with both calls named instead of exchanging different byte counts.
uint32_t ring_tag(uint32_t phase, size_t chunk, size_t chunks) {
  return phase + 8 * static_cast<uint32_t>(chunk + kMaxHierarchicalChunks * chunks);
}
constexpr uint32_t kFoldIn = 4;  // phase tags of the fold into a partner, and back
constexpr uint32_t kFoldOut = 5;
constexpr uint32_t kLeaderLocal = 6;  // the leader scheme: inside the node, and across
constexpr uint32_t kLeaderCross = 7;

struct LocalStep {
  RingKind kind;  // kReduceScatter or kAllgather
  size_t chunk;
};

}  // namespace

size_t hierarchical_chunks(size_t rows, size_t row_bytes, size_t ranks, size_t chunk_bytes) {
  if (chunk_bytes == 0 || ranks == 0) return 1;
  const size_t wanted = (rows * row_bytes + chunk_bytes - 1) / chunk_bytes;
  // Every chunk needs a row per rank, so that no ring step is empty.
  const size_t most = std::min(rows / ranks, kMaxHierarchicalChunks - 1);
  return std::max<size_t>(1, std::min(wanted, most));
}

namespace {

// The three phases, pipelined, on `local_members` (this node's ranks taking
// part, the same number on every node) and `cross_members`.
void pipelined_phases(Transport& transport, const std::vector<int>& local_members,
                      const std::vector<int>& cross_members, const RingOptions& options,
                      size_t chunk_bytes) {
  TransportView local(transport, local_members);
  TransportView cross(transport, cross_members);

  const size_t rows = options.count / options.row_elements;
  const size_t row_bytes = options.row_elements * element_size(options.dtype);
  const size_t chunks = hierarchical_chunks(
      rows, row_bytes, static_cast<size_t>(local.size() * cross.size()), chunk_bytes);

  // Per chunk: the node's reduce-scatter, this rank's segment's allreduce
  // across nodes, the node's all-gather. The segment is cut in whole rows, as
  // the ring cuts it; a chunk of >= K*N rows gives every segment >= N rows.
  std::vector<char> cross_scratch;  // the cross ring runs beside a local one
  std::vector<RingOptions> scatter(chunks, options), across(chunks, options),
      gather(chunks, options);
  for (size_t c = 0; c < chunks; ++c) {
    const RowRange part = segment_rows(rows, chunks, c);
    const RowRange own = segment_rows(part.rows, static_cast<size_t>(local.size()),
                                      static_cast<size_t>(local.rank()));
    char* base = static_cast<char*>(options.data) + part.first * row_bytes;
    scatter[c].data = base;
    scatter[c].count = part.rows * options.row_elements;
    scatter[c].header.root = ring_tag(1, c, chunks);
    gather[c] = scatter[c];
    gather[c].header.root = ring_tag(3, c, chunks);
    across[c].data = base + own.first * row_bytes;
    across[c].count = own.rows * options.row_elements;
    across[c].header.root = ring_tag(2, c, chunks);
    across[c].scratch = &cross_scratch;
  }

  // The node's links carry one ring at a time, in this order on every rank of
  // the node: the reduce-scatters run two chunks ahead of the all-gathers
  // (RS0 RS1 AG0 RS2 AG1 ...), so that while the rings between nodes reduce
  // chunk i, the node already scatters chunk i+1 and gathers chunk i-1. The
  // order is fixed, never decided by timing, because every rank of a node
  // must run the same ring on the same links.
  std::vector<LocalStep> plan;
  constexpr size_t kAhead = 2;
  for (size_t c = 0; c < std::min(kAhead, chunks); ++c) {
    plan.push_back({RingKind::kReduceScatter, c});
  }
  for (size_t c = 0; c < chunks; ++c) {
    plan.push_back({RingKind::kAllgather, c});
    if (c + kAhead < chunks) plan.push_back({RingKind::kReduceScatter, c + kAhead});
  }

  size_t next_local = 0;  // index into plan
  size_t scattered = 0;   // chunks whose reduce-scatter has finished
  size_t reduced = 0;     // chunks whose cross-node allreduce has finished
  std::optional<RingTask> local_task;
  std::optional<RingTask> cross_task;
  Deadline deadline = Deadline::inactivity(options.timeout);
  std::vector<WaitRequest> requests;
  for (;;) {
    if (!local_task && next_local < plan.size()) {
      const LocalStep& step = plan[next_local];
      if (step.kind == RingKind::kReduceScatter) {
        local_task.emplace(local, scatter[step.chunk], step.kind);
      } else if (reduced > step.chunk) {
        local_task.emplace(local, gather[step.chunk], step.kind);
      }
    }
    if (!cross_task && reduced < chunks && scattered > reduced) {
      cross_task.emplace(cross, across[reduced], RingKind::kAllreduce);
    }
    if (!local_task && !cross_task) {
      if (next_local == plan.size() && reduced == chunks) return;
      throw IoError("hierarchical allreduce stalled with nothing to run (internal error)");
    }
    bool moved = false;
    if (local_task) {
      moved = local_task->progress();
      if (local_task->done()) {
        if (plan[next_local].kind == RingKind::kReduceScatter) ++scattered;
        ++next_local;
        local_task.reset();
        moved = true;
      }
    }
    if (cross_task) {
      moved = cross_task->progress() || moved;
      if (cross_task->done()) {
        ++reduced;
        cross_task.reset();
        moved = true;
      }
    }
    if (moved) {
      deadline.note_progress();
      continue;
    }
    requests.clear();
    if (local_task) local_task->add_wait_requests(&requests);
    if (cross_task) cross_task->add_wait_requests(&requests);
    if (requests.empty()) {
      throw IoError("hierarchical allreduce has nothing to wait for (internal error)");
    }
    transport.wait(requests.data(), requests.size(), deadline, options.spin_us);
    if (local_task) local_task->check_strays();
    if (cross_task) cross_task->check_strays();
  }
}

// A copy of `from`'s buffer to every rank of `ranks`, exact to the bit: the
// others zero theirs and the ranks OR the bytes together in a ring.
void share_from(Transport& transport, const std::vector<int>& ranks, int from,
                const RingOptions& options, uint32_t phase) {
  TransportView view(transport, ranks);
  if (transport.rank() != from) {
    std::memset(options.data, 0, options.count * element_size(options.dtype));
  }
  RingOptions copy = options;
  copy.header.root = ring_tag(phase, 1, 2);
  copy.dtype = DataType::kUint8;
  copy.op = ReduceOp::kBitOr;
  copy.count = options.count * element_size(options.dtype);
  copy.row_elements = options.row_elements * element_size(options.dtype);
  ring_allreduce(view, copy);
}

// The leader scheme on equal nodes (see hierarchical_allreduce).
void leader_phases(Transport& transport, const NodeLayout& layout, const RingOptions& options) {
  const int leader = layout.local_members.front();
  RingOptions local = options;
  local.header.root = ring_tag(kLeaderLocal, 0, 2);
  TransportView node(transport, layout.local_members);
  ring_allreduce(node, local);  // a mean: over the node's K ranks
  if (transport.rank() == leader) {
    std::vector<int> leaders;  // local rank 0 of every node, in node order
    for (size_t r = 0; r < layout.local_index.size(); ++r) {
      if (layout.local_index[r] == 0) leaders.push_back(static_cast<int>(r));
    }
    RingOptions cross = options;
    cross.header.root = ring_tag(kLeaderCross, 0, 1);
    TransportView across(transport, leaders);
    ring_allreduce(across, cross);  // a mean: over the N nodes, so over all K * N ranks
  }
  share_from(transport, layout.local_members, leader, options, kLeaderLocal);
}

}  // namespace

void hierarchical_allreduce(Transport& transport, const NodeLayout& layout,
                            const RingOptions& options, size_t chunk_bytes, bool leader) {
  if (!layout.hierarchical() || layout.local_members.empty() ||
      options.count < static_cast<size_t>(transport.size()) || options.scratch == nullptr ||
      options.row_elements == 0 || options.count % options.row_elements != 0) {
    throw InvalidArgumentError(
        "the hierarchical allreduce needs several nodes, one with several ranks, and at least "
        "one element per rank (internal error: the communicator checks this)");
  }
  const int rank = transport.rank();
  const int index = layout.local_index[static_cast<size_t>(rank)];
  const int fewest = layout.min_per_node;
  if (layout.per_node > 0 && leader) {
    leader_phases(transport, layout, options);
    return;
  }
  if (layout.per_node > 0) {  // every node has as many ranks: all take part
    pipelined_phases(transport, layout.local_members, layout.cross_members, options, chunk_bytes);
    return;
  }
  // Unequal nodes. Local ranks 0..M-1 of every node run the phases; the others
  // fold into them first and get the result back. Partners and extras walk
  // their pairs in the same order (extras by local index).
  std::vector<int> core;                   // this node's ranks 0..M-1
  std::vector<std::pair<int, int>> folds;  // (partner, extra) pairs this rank is in
  for (int member : layout.local_members) {
    const int i = layout.local_index[static_cast<size_t>(member)];
    if (i < fewest) {
      core.push_back(member);
      continue;
    }
    const int partner = layout.local_members[static_cast<size_t>(i % fewest)];
    if (member == rank || partner == rank) folds.emplace_back(partner, member);
  }
  RingOptions summed = options;  // a mean is a sum divided once at the end
  if (options.op == ReduceOp::kMean) summed.op = ReduceOp::kSum;
  auto fold = [&](uint32_t phase) {
    for (const auto& [partner, extra] : folds) {
      TransportView pair(transport, {partner, extra});
      RingOptions step = summed;
      step.header.root = ring_tag(phase, 0, 1);
      if (phase == kFoldOut) {
        // A copy from the partner, exact to the bit: OR with the extra's zeros.
        if (rank == extra)
          std::memset(options.data, 0, options.count * element_size(options.dtype));
        step.dtype = DataType::kUint8;
        step.op = ReduceOp::kBitOr;
        step.count = options.count * element_size(options.dtype);
        step.row_elements = options.row_elements * element_size(options.dtype);
      }
      ring_allreduce(pair, step);
    }
  };
  fold(kFoldIn);
  // With M = 1 the node's phases have one rank and nothing to do: the node
  // leaders' rings between nodes carry it all.
  if (index < fewest) pipelined_phases(transport, core, layout.cross_members, summed, chunk_bytes);
  fold(kFoldOut);
  if (options.op == ReduceOp::kMean) {
    finish_mean(options.data, options.count, options.dtype, static_cast<size_t>(transport.size()));
  }
}

// ---- Broadcast and all-gather ----

namespace {

// Per node, its ranks in rank order.
std::vector<std::vector<int>> members_by_node(const NodeLayout& layout) {
  std::vector<std::vector<int>> members(static_cast<size_t>(layout.nodes));
  for (size_t r = 0; r < layout.node_of.size(); ++r) {
    members[static_cast<size_t>(layout.node_of[r])].push_back(static_cast<int>(r));
  }
  return members;
}

}  // namespace

TreeTopology hierarchical_broadcast_tree(const NodeLayout& layout, int rank, int root) {
  const std::vector<std::vector<int>> members = members_by_node(layout);
  const size_t nodes = members.size();
  const size_t root_node = static_cast<size_t>(layout.node_of[static_cast<size_t>(root)]);
  const size_t node = static_cast<size_t>(layout.node_of[static_cast<size_t>(rank)]);
  const std::vector<int>& mine = members[node];
  // The leader of node j: the root on its own node, else its first rank.
  auto leader = [&](size_t j) { return j == root_node ? root : members[j].front(); };
  // This node's chain starts at its leader and wraps around its ranks.
  const size_t start =
      static_cast<size_t>(std::find(mine.begin(), mine.end(), leader(node)) - mine.begin());
  const size_t place =
      static_cast<size_t>(std::find(mine.begin(), mine.end(), rank) - mine.begin());
  const size_t k = mine.size();
  const size_t in_chain = (place + k - start) % k;  // 0 for the leader
  TreeTopology tree;
  if (in_chain == 0) {
    // Leaders: a chain across the nodes in node order from the root's node.
    const size_t hop = (node + nodes - root_node) % nodes;
    if (hop > 0) tree.parent = leader((node + nodes - 1) % nodes);
    if (hop + 1 < nodes) tree.children.push_back(leader((node + 1) % nodes));
  } else {
    tree.parent = mine[(start + in_chain - 1) % k];
  }
  if (in_chain + 1 < k) tree.children.push_back(mine[(start + in_chain + 1) % k]);
  return tree;
}

namespace {

// Header root fields of the all-gather's phases (a broadcast's root field is
// its root; an all-gather's is otherwise 0).
constexpr uint32_t kGatherLocal = 1;
constexpr uint32_t kGatherAcross = 2;
constexpr uint32_t kGatherDownBefore = 3;
constexpr uint32_t kGatherDownAfter = 4;

}  // namespace

namespace {

// Equal nodes: K rings across the nodes and the node's ring, pipelined in
// chunks of every block. The gathered blocks sit in `work` by chunk, then by
// local index, then by node, so that both rings see contiguous segments:
// chunk c of every block with local index i forms one row of N segments (the
// ring across nodes of the ranks with local index i), and the K such rows of
// chunk c form the node ring's K segments. A final copy puts every block in
// its rank's place.
void sharded_allgather(Transport& transport, const NodeLayout& layout, const RingOptions& options,
                       std::vector<char>* work, size_t chunk_bytes) {
  const size_t n = layout.node_of.size();
  const size_t nodes = static_cast<size_t>(layout.nodes);
  const size_t item = element_size(options.dtype);
  const size_t count = options.row_elements;  // elements per block
  const size_t block = count * item;
  const int rank = transport.rank();
  const size_t node = static_cast<size_t>(layout.node_of[static_cast<size_t>(rank)]);
  const size_t index = static_cast<size_t>(layout.local_index[static_cast<size_t>(rank)]);
  // Chunks of about chunk_bytes of output each, at least one element per block.
  size_t chunks = chunk_bytes == 0 ? 1 : (n * block + chunk_bytes - 1) / chunk_bytes;
  chunks = std::max<size_t>(1, std::min({chunks, count, kMaxHierarchicalChunks - 1}));

  work->resize(n * block);
  char* gathered = work->data();
  char* output = static_cast<char*>(options.data);
  auto slot = [&](size_t c, size_t i, size_t j) {  // chunk c of the block of (local i, node j)
    const RowRange part = segment_rows(count, chunks, c);
    return gathered + (n * part.first + (i * nodes + j) * part.rows) * item;
  };
  TransportView local(transport, layout.local_members);
  TransportView cross(transport, layout.cross_members);
  std::vector<char> cross_scratch;
  std::vector<RingOptions> across(chunks, options), inside(chunks, options);
  for (size_t c = 0; c < chunks; ++c) {
    const RowRange part = segment_rows(count, chunks, c);
    std::memcpy(slot(c, index, node),
                output + static_cast<size_t>(rank) * block + part.first * item, part.rows * item);
    RingOptions& a = across[c];
    a.data = slot(c, index, 0);
    a.count = nodes * part.rows;
    a.row_elements = part.rows;
    a.segment_ends = nullptr;
    a.scratch = &cross_scratch;
    a.header.root = ring_tag(6, c, chunks);
    RingOptions& b = inside[c];
    b.data = slot(c, 0, 0);
    b.count = n * part.rows;
    b.row_elements = nodes * part.rows;
    b.segment_ends = nullptr;
    b.header.root = ring_tag(7, c, chunks);
  }

  // Chunk c goes across the nodes, then around the node; the node's ring of
  // chunk c runs beside the rings across nodes of chunk c+1.
  size_t next_cross = 0, crossed = 0, next_local = 0, finished = 0;
  std::optional<RingTask> cross_task;
  std::optional<RingTask> local_task;
  Deadline deadline = Deadline::inactivity(options.timeout);
  std::vector<WaitRequest> requests;
  while (finished < chunks) {
    if (!cross_task && next_cross < chunks) {
      cross_task.emplace(cross, across[next_cross++], RingKind::kAllgather);
    }
    if (!local_task && next_local < crossed) {
      local_task.emplace(local, inside[next_local++], RingKind::kAllgather);
    }
    if (!cross_task && !local_task) {
      throw IoError("hierarchical allgather stalled with nothing to run (internal error)");
    }
    bool moved = false;
    if (cross_task) {
      moved = cross_task->progress();
      if (cross_task->done()) {
        ++crossed;
        cross_task.reset();
        moved = true;
      }
    }
    if (local_task) {
      moved = local_task->progress() || moved;
      if (local_task->done()) {
        ++finished;
        local_task.reset();
        moved = true;
      }
    }
    if (moved) {
      deadline.note_progress();
      continue;
    }
    requests.clear();
    if (cross_task) cross_task->add_wait_requests(&requests);
    if (local_task) local_task->add_wait_requests(&requests);
    if (requests.empty()) {
      throw IoError("hierarchical allgather has nothing to wait for (internal error)");
    }
    transport.wait(requests.data(), requests.size(), deadline, options.spin_us);
    if (cross_task) cross_task->check_strays();
    if (local_task) local_task->check_strays();
  }
  for (size_t r = 0; r < n; ++r) {
    const size_t i = static_cast<size_t>(layout.local_index[r]);
    const size_t j = static_cast<size_t>(layout.node_of[r]);
    for (size_t c = 0; c < chunks; ++c) {
      const RowRange part = segment_rows(count, chunks, c);
      std::memcpy(output + r * block + part.first * item, slot(c, i, j), part.rows * item);
    }
  }
}

}  // namespace

void hierarchical_allgather(Transport& transport, const NodeLayout& layout,
                            const RingOptions& options, std::vector<char>* work, size_t chunk_bytes,
                            bool leader) {
  const size_t n = layout.node_of.size();
  if (!layout.hierarchical() || options.row_elements == 0 || options.scratch == nullptr ||
      options.count != n * options.row_elements || static_cast<size_t>(transport.size()) != n) {
    throw InvalidArgumentError(
        "the hierarchical all-gather needs several nodes, one with several ranks, and a "
        "non-empty block per rank (internal error: the communicator checks this)");
  }
  if (layout.per_node > 0 && !leader) {
    sharded_allgather(transport, layout, options, work, chunk_bytes);
    return;
  }
  const int rank = transport.rank();
  const size_t block = options.row_elements * element_size(options.dtype);
  const std::vector<std::vector<int>> members = members_by_node(layout);
  // Blocks in node order: node j's ranks at rows first[j] .. first[j+1].
  std::vector<size_t> ends;  // per node, its last row + 1
  std::vector<size_t> place(n);
  bool identity = true;
  for (const std::vector<int>& node : members) {
    const size_t first = ends.empty() ? 0 : ends.back();
    for (size_t i = 0; i < node.size(); ++i) {
      place[static_cast<size_t>(node[i])] = first + i;
      identity = identity && static_cast<size_t>(node[i]) == first + i;
    }
    ends.push_back(first + node.size());
  }
  char* output = static_cast<char*>(options.data);
  char* gathered = output;
  if (!identity) {
    work->resize(n * block);
    gathered = work->data();
    std::memcpy(gathered + place[static_cast<size_t>(rank)] * block,
                output + static_cast<size_t>(rank) * block, block);
  }
  const size_t node = static_cast<size_t>(layout.node_of[static_cast<size_t>(rank)]);
  const size_t node_first = node == 0 ? 0 : ends[node - 1];
  const size_t node_end = ends[node];
  TransportView local(transport, layout.local_members);

  // 1. The node's blocks, among its ranks.
  RingOptions inside = options;
  inside.data = gathered + node_first * block;
  inside.count = (node_end - node_first) * options.row_elements;
  inside.segment_ends = nullptr;
  inside.header.root = kGatherLocal;
  ring_allgather(local, inside);

  // 2. Whole nodes, among the leaders.
  if (layout.local_index[static_cast<size_t>(rank)] == 0) {
    std::vector<int> leaders;
    for (const std::vector<int>& members_of_node : members) leaders.push_back(members_of_node[0]);
    TransportView across(transport, leaders);
    RingOptions whole = options;
    whole.data = gathered;
    whole.segment_ends = &ends;
    whole.header.root = kGatherAcross;
    ring_allgather(across, whole);
  }

  // 3. The other nodes' blocks, from the leader down the node's chain.
  if (local.size() > 1) {
    auto down = [&](size_t first_row, size_t rows, uint32_t tag) {
      if (rows == 0) return;
      RootedOptions chained;
      chained.data = gathered + first_row * block;
      chained.count = rows * options.row_elements;
      chained.dtype = options.dtype;
      chained.reduce = false;
      chained.broadcast = true;
      chained.topology = chain(local.rank(), local.size(), 0);
      chained.header = options.header;
      chained.header.root = tag;
      chained.timeout = options.timeout;
      chained.block_bytes = options.block_bytes;
      chained.spin_us = options.spin_us;
      rooted_collective(local, chained);
    };
    down(0, node_first, kGatherDownBefore);
    down(node_end, n - node_end, kGatherDownAfter);
  }

  if (!identity) {
    for (size_t r = 0; r < n; ++r)
      std::memcpy(output + r * block, gathered + place[r] * block, block);
  }
}

}  // namespace adaptrain::collective
