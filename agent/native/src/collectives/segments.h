// How a buffer is cut into one segment per rank, and the rooted trees the
// tree, star and chain algorithms run on. Pure functions, shared by the
// algorithms, the communicator and the unit tests.
#pragma once

#include <cstddef>
#include <vector>

namespace adaptrain::collective {

// Rows [first, first + rows) of a buffer of `total_rows` rows cut into
// `parts` segments the way numpy.array_split cuts them: the first
// total_rows % parts segments get one row more than the others.
struct RowRange {
  size_t first;
  size_t rows;
};
RowRange segment_rows(size_t total_rows, size_t parts, size_t index);

// (x mod n) for any signed x, in [0, n).
size_t ring_index(long long x, size_t n);

// One rank's place in a tree rooted at `root`: its parent (-1 for the root)
// and its children, as real ranks. Data flows up the tree in a reduction and
// down it in a broadcast.
struct TreeTopology {
  int parent = -1;
  std::vector<int> children;
};

// Binary tree over ranks relabelled so that `root` is 0: virtual rank v has
// parent (v-1)/2 and children 2v+1, 2v+2. Depth ceil(log2(n+1)) - 1.
TreeTopology binary_tree(int rank, int size, int root);
// The root is everyone's parent; nobody else has children.
TreeTopology star(int rank, int size, int root);
// root -> root+1 -> ... -> root-1 (mod size): a pipelined chain, which is how
// the ring broadcasts (every link carries the buffer exactly once).
TreeTopology chain(int rank, int size, int root);

}  // namespace adaptrain::collective
