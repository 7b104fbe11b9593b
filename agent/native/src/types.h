// Element types and reduction operators the collectives understand. Only
// float32 is wired up so far; adding a type means a DataType value, its size
// and name here, and its kernels in reduce.cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace adaptrain::collective {

enum class DataType : uint32_t { kFloat32 = 1 };

enum class ReduceOp : uint32_t { kSum = 1, kMean = 2, kMin = 3, kMax = 4 };

size_t element_size(DataType type);
const char* name_of(DataType type);
const char* name_of(ReduceOp op);

// "sum" -> ReduceOp::kSum; throws InvalidArgumentError listing the valid names.
ReduceOp parse_reduce_op(const std::string& name);

}  // namespace adaptrain::collective
