// Elementwise reduction kernels used by every allreduce algorithm.
#pragma once

#include <cstddef>

#include "types.h"

namespace adaptrain::collective {

// accumulator[i] = op(accumulator[i], incoming[i]) for i < count.
using ReduceFn = void (*)(void* accumulator, const void* incoming, size_t count);

// The kernel that combines two partial results for `op`. Mean combines like
// sum; the division happens once, in finish_mean.
ReduceFn reduce_kernel(DataType type, ReduceOp op);

// data[i] /= divisor, applied once to a fully reduced mean.
void finish_mean(void* data, size_t count, DataType type, size_t divisor);

}  // namespace adaptrain::collective
