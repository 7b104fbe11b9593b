// Segment arithmetic and the rooted trees the algorithms run on.
#include <algorithm>
#include <set>
#include <vector>

#include "collectives/allreduce_hierarchical.h"
#include "collectives/segments.h"
#include "unit_tests.h"

using namespace adaptrain::collective;

TEST(segments_cut_like_numpy_array_split) {
  for (size_t rows : {0, 1, 2, 7, 8, 1001}) {
    for (size_t parts = 1; parts <= 9; ++parts) {
      size_t next = 0;
      for (size_t index = 0; index < parts; ++index) {
        const RowRange range = segment_rows(rows, parts, index);
        CHECK_EQ(range.first, next);  // contiguous, in order
        // array_split: the first rows % parts pieces get one row more.
        CHECK_EQ(range.rows, rows / parts + (index < rows % parts ? 1 : 0));
        next += range.rows;
      }
      CHECK_EQ(next, rows);  // covers everything
    }
  }
}

TEST(ring_index_wraps_negative_offsets) {
  CHECK_EQ(ring_index(-1, 4), size_t{3});
  CHECK_EQ(ring_index(-9, 4), size_t{3});
  CHECK_EQ(ring_index(4, 4), size_t{0});
  CHECK_EQ(ring_index(5, 1), size_t{0});
}

namespace {

// Every rank agrees with its parent about being its child, there is one root,
// and walking up from any rank reaches it within max_depth steps.
void check_tree(TreeTopology (*make)(int, int, int), int size, int root, int max_depth) {
  std::vector<TreeTopology> ranks;
  for (int rank = 0; rank < size; ++rank) ranks.push_back(make(rank, size, root));
  CHECK_EQ(ranks[root].parent, -1);
  std::multiset<int> children_seen;
  for (int rank = 0; rank < size; ++rank) {
    for (int child : ranks[rank].children) {
      CHECK(child >= 0 && child < size && child != rank);
      CHECK_EQ(ranks[child].parent, rank);
      children_seen.insert(child);
    }
    if (rank == root) continue;
    const int parent = ranks[rank].parent;
    CHECK(parent >= 0 && parent < size);
    const auto& siblings = ranks[parent].children;
    CHECK(std::find(siblings.begin(), siblings.end(), rank) != siblings.end());
    int depth = 0;
    for (int at = rank; at != root; at = ranks[at].parent) {
      ++depth;
      CHECK(depth <= max_depth);
    }
  }
  CHECK_EQ(children_seen.size(), static_cast<size_t>(size - 1));  // everyone but the root, once
  CHECK_EQ(std::set<int>(children_seen.begin(), children_seen.end()).size(), children_seen.size());
}

int log2_ceil(int n) {
  int bits = 0;
  while ((1 << bits) < n) ++bits;
  return bits;
}

}  // namespace

TEST(binary_trees_rooted_anywhere_are_trees_of_logarithmic_depth) {
  for (int size = 1; size <= 17; ++size) {
    for (int root = 0; root < size; ++root) {
      check_tree(&binary_tree, size, root, log2_ceil(size + 1));
    }
  }
  const TreeTopology top = binary_tree(0, 7, 0);
  CHECK_EQ(top.children, (std::vector<int>{1, 2}));
  CHECK_EQ(binary_tree(3, 7, 0).parent, 1);
  CHECK_EQ(binary_tree(0, 7, 5).parent, 5);  // virtual rank 2, a child of virtual rank 0 (the root)
  CHECK_EQ(binary_tree(1, 7, 5).parent, 6);  // virtual rank 3, a child of virtual rank 1 = rank 6
}

TEST(stars_have_every_rank_under_the_root) {
  for (int size = 1; size <= 9; ++size) {
    for (int root = 0; root < size; ++root) check_tree(&star, size, root, 1);
  }
  CHECK_EQ(star(2, 4, 2).children, (std::vector<int>{3, 0, 1}));
}

TEST(chains_run_from_the_root_around_the_ring) {
  for (int size = 1; size <= 9; ++size) {
    for (int root = 0; root < size; ++root) check_tree(&chain, size, root, size - 1);
  }
  CHECK_EQ(chain(0, 4, 2).parent, 3);
  CHECK_EQ(chain(1, 4, 2).children, std::vector<int>{});
}

TEST(hierarchical_chunks_leave_a_row_per_rank) {
  CHECK_EQ(hierarchical_chunks(1 << 20, 4, 8, 0), size_t{1});        // 0: one chunk
  CHECK_EQ(hierarchical_chunks(1 << 20, 4, 8, 1 << 20), size_t{4});  // 4 MiB in 1 MiB
  CHECK_EQ(hierarchical_chunks((1 << 20) + 1, 4, 8, 1 << 20), size_t{5});
  CHECK_EQ(hierarchical_chunks(20, 4, 8, 4), size_t{2});  // 20 rows, 8 ranks
  CHECK_EQ(hierarchical_chunks(8, 4, 8, 4), size_t{1});
  CHECK_EQ(hierarchical_chunks(size_t{1} << 30, 4, 2, 4096), kMaxHierarchicalChunks - 1);
}

TEST(node_layout_of_unequal_nodes) {
  const NodeLayout layout = node_layout({"a", "a", "a", "b", "b"}, 4);
  CHECK_EQ(layout.nodes, 2);
  CHECK_EQ(layout.per_node, 0);
  CHECK_EQ(layout.min_per_node, 2);
  CHECK_EQ(layout.max_per_node, 3);
  CHECK(layout.hierarchical());
  CHECK(layout.local_members == (std::vector<int>{3, 4}));
  CHECK(layout.cross_members == (std::vector<int>{1, 4}));
  CHECK(!node_layout({"a", "b", "c"}, 0).hierarchical());
  CHECK(!node_layout({"a", "a"}, 0).hierarchical());
}
