// Elementwise reduction kernels used by every allreduce algorithm.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/types.h"

namespace adaptrain::collective {

// accumulator[i] = op(accumulator[i], incoming[i]) for i < count.
using ReduceFn = void (*)(void* accumulator, const void* incoming, size_t count);

// The kernel that combines two partial results for `op`. Mean combines like
// sum; the division happens once, in finish_mean. Throws InvalidArgumentError
// for a combination check_op_supported rejects.
ReduceFn reduce_kernel(DataType type, ReduceOp op);

// data[i] /= divisor, applied once to a fully reduced mean (float types only).
void finish_mean(void* data, size_t count, DataType type, size_t divisor);

// IEEE 754 binary16 <-> binary32. float16 is reduced in float32: each
// pairwise combination widens both operands, combines them and rounds the
// result back to the nearest float16 (ties to even). Exact for every finite
// value, infinities and NaN (a NaN stays a NaN).
float half_to_float(uint16_t half);
uint16_t float_to_half(float value);

}  // namespace adaptrain::collective
