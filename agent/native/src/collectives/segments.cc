#include "collectives/segments.h"

#include <algorithm>

namespace adaptrain::collective {

RowRange segment_rows(size_t total_rows, size_t parts, size_t index) {
  const size_t base = total_rows / parts;
  const size_t extra = total_rows % parts;
  return RowRange{index * base + std::min(index, extra), base + (index < extra ? 1 : 0)};
}

size_t ring_index(long long x, size_t n) {
  const long long m = static_cast<long long>(n);
  return static_cast<size_t>(((x % m) + m) % m);
}

namespace {

int virtual_rank(int rank, int size, int root) {
  return static_cast<int>(ring_index(rank - root, size));
}
int real_rank(int virtual_rank, int size, int root) { return (virtual_rank + root) % size; }

}  // namespace

TreeTopology binary_tree(int rank, int size, int root) {
  TreeTopology topology;
  const int v = virtual_rank(rank, size, root);
  if (v > 0) topology.parent = real_rank((v - 1) / 2, size, root);
  for (int child = 2 * v + 1; child <= 2 * v + 2 && child < size; ++child) {
    topology.children.push_back(real_rank(child, size, root));
  }
  return topology;
}

TreeTopology star(int rank, int size, int root) {
  TreeTopology topology;
  if (rank != root) {
    topology.parent = root;
    return topology;
  }
  for (int v = 1; v < size; ++v) topology.children.push_back(real_rank(v, size, root));
  return topology;
}

TreeTopology chain(int rank, int size, int root) {
  TreeTopology topology;
  const int v = virtual_rank(rank, size, root);
  if (v > 0) topology.parent = real_rank(v - 1, size, root);
  if (v + 1 < size) topology.children.push_back(real_rank(v + 1, size, root));
  return topology;
}

}  // namespace adaptrain::collective
