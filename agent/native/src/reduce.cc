#include "reduce.h"

#include "errors.h"

namespace adaptrain::collective {
namespace {

// Plain loops over restrict-qualified pointers: the compiler vectorises them,
// and the ring calls them on blocks that were just received, so the data is
// still in cache.
template <typename T>
void sum_kernel(void* accumulator, const void* incoming, size_t count) {
  T* __restrict out = static_cast<T*>(accumulator);
  const T* __restrict in = static_cast<const T*>(incoming);
  for (size_t i = 0; i < count; ++i) out[i] += in[i];
}

// min/max propagate NaN like numpy.minimum/maximum, so a NaN gradient is not
// silently dropped by one rank and kept by another.
template <typename T>
void min_kernel(void* accumulator, const void* incoming, size_t count) {
  T* __restrict out = static_cast<T*>(accumulator);
  const T* __restrict in = static_cast<const T*>(incoming);
  for (size_t i = 0; i < count; ++i) {
    T a = out[i], b = in[i];
    out[i] = (a < b || a != a) ? a : b;
  }
}

template <typename T>
void max_kernel(void* accumulator, const void* incoming, size_t count) {
  T* __restrict out = static_cast<T*>(accumulator);
  const T* __restrict in = static_cast<const T*>(incoming);
  for (size_t i = 0; i < count; ++i) {
    T a = out[i], b = in[i];
    out[i] = (a > b || a != a) ? a : b;
  }
}

template <typename T>
ReduceFn kernel_for(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kMean:
      return &sum_kernel<T>;
    case ReduceOp::kMin:
      return &min_kernel<T>;
    case ReduceOp::kMax:
      return &max_kernel<T>;
  }
  throw InvalidArgumentError("unknown reduce op");
}

}  // namespace

ReduceFn reduce_kernel(DataType type, ReduceOp op) {
  switch (type) {
    case DataType::kFloat32:
      return kernel_for<float>(op);
  }
  throw InvalidArgumentError("unknown data type");
}

void finish_mean(void* data, size_t count, DataType type, size_t divisor) {
  switch (type) {
    case DataType::kFloat32: {
      float* values = static_cast<float*>(data);
      const float d = static_cast<float>(divisor);
      for (size_t i = 0; i < count; ++i) values[i] /= d;
      return;
    }
  }
}

}  // namespace adaptrain::collective
