// Element types and reduction operators the collectives understand.
//
// Adding a type means a DataType value, its size and name in types.cc, and its
// kernels in collectives/reduce.cc. kUint8 is internal: consensus and the tree/star
// all-gather move raw bytes with it, the Python facade never exposes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace adaptrain::collective {

enum class DataType : uint32_t {
  kFloat32 = 1,
  kFloat64 = 2,
  kFloat16 = 3,
  kInt32 = 4,
  kInt64 = 5,
  kUint8 = 6,
};

// kBitOr is internal: OR-ing a buffer that only one rank filled into zeros
// elsewhere reproduces that rank's bytes exactly, which turns any allreduce
// algorithm into an all-gather (see allgather in communicator.cc).
enum class ReduceOp : uint32_t { kSum = 1, kMean = 2, kMin = 3, kMax = 4, kBitOr = 5 };

size_t element_size(DataType type);
const char* name_of(DataType type);
const char* name_of(ReduceOp op);
bool is_integer(DataType type);

// "sum" -> ReduceOp::kSum; throws InvalidArgumentError listing the valid names.
ReduceOp parse_reduce_op(const std::string& name);

// Throws InvalidArgumentError when `op` is not defined on `type` (mean of
// integers: an integer mean would silently truncate, so the caller must say
// what they want: sum and divide, or convert to a float type first).
void check_op_supported(DataType type, ReduceOp op);

}  // namespace adaptrain::collective
