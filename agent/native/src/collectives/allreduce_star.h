// Star allreduce; see allreduce_star.cc.
#pragma once

#include "collectives/allreduce_tree.h"

namespace adaptrain::collective {

// Allreduce over star(rank, size, 0); topology in options is ignored.
void star_allreduce(Transport& transport, RootedOptions options);

}  // namespace adaptrain::collective
