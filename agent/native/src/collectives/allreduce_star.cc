// Star allreduce: every rank sends its buffer to rank 0, which reduces them
// all and sends the result back.
//
// Two hops whatever n is, the fewest possible, so for small buffers on a few
// ranks it has the lowest latency of the three algorithms. Everything goes
// through the root, though: its link carries (n-1) buffers each way and it
// does all the reduction work, so it falls behind the tree as n grows and far
// behind the ring as buffers grow. It is the depth-one case of the rooted
// engine in allreduce_tree.cc (same pipelining, in-place and header rules);
// the root reads all children at once and reduces their blocks as they land.
#include "collectives/allreduce_star.h"

namespace adaptrain::collective {

void star_allreduce(Transport& transport, RootedOptions options) {
  options.reduce = options.broadcast = true;
  options.topology = star(transport.rank(), transport.size(), 0);
  rooted_collective(transport, options);
}

}  // namespace adaptrain::collective
