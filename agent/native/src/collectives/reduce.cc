#include "collectives/reduce.h"

#include <cstring>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "core/errors.h"

namespace adaptrain::collective {

float half_to_float(uint16_t half) {
  const uint32_t sign = static_cast<uint32_t>(half & 0x8000u) << 16;
  const uint32_t exponent = (half >> 10) & 0x1Fu;
  const uint32_t mantissa = half & 0x3FFu;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);  // infinity or NaN (payload kept)
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  // rebias 15 -> 127
  } else {
    // Zero or subnormal: mantissa * 2^-24, exact in float32.
    float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-08f;
    std::memcpy(&bits, &magnitude, sizeof(bits));
    bits |= sign;
  }
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

uint16_t float_to_half(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u) {
    if (magnitude == 0x7F800000u) return sign | 0x7C00u;
    // NaN: keep the top payload bits and force the quiet bit so it stays a NaN.
    return static_cast<uint16_t>(sign | 0x7E00u | ((magnitude >> 13) & 0x3FFu));
  }
  // 65520 lies halfway between the largest float16 (65504) and 2^16; ties to
  // even round it, and everything above, to infinity.
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;
  if (magnitude >= 0x38800000u) {
    // Normal in float16: rebias the exponent (127 -> 15), then drop 13
    // mantissa bits rounding to nearest even; a carry correctly bumps the
    // exponent.
    const uint32_t rebiased = magnitude - 0x38000000u;
    const uint32_t rounded = rebiased + 0xFFFu + ((rebiased >> 13) & 1u);
    return static_cast<uint16_t>(sign | (rounded >> 13));
  }
  // 2^-25 is halfway between 0 and the smallest subnormal; ties go to 0.
  if (magnitude <= 0x33000000u) return sign;
  // Subnormal in float16: value / 2^-24, rounded to nearest even.
  const uint32_t full = (magnitude & 0x7FFFFFu) | 0x800000u;
  const int shift = 126 - static_cast<int>(magnitude >> 23);  // 14..24
  uint32_t result = full >> shift;
  const uint32_t remainder = full & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1);
  if (remainder > halfway || (remainder == halfway && (result & 1u))) ++result;
  return static_cast<uint16_t>(sign | result);
}

namespace {

// Plain loops over restrict-qualified pointers: the compiler vectorises them,
// and the algorithms call them on blocks that were just received, so the data
// is still in cache.
template <typename T>
void sum_kernel(void* accumulator, const void* incoming, size_t count) {
  T* __restrict out = static_cast<T*>(accumulator);
  const T* __restrict in = static_cast<const T*>(incoming);
  if constexpr (std::is_integral_v<T>) {
    // Integers wrap around (two's complement) like numpy's, without the
    // undefined behaviour of signed overflow.
    using U = std::make_unsigned_t<T>;
    for (size_t i = 0; i < count; ++i) {
      out[i] = static_cast<T>(static_cast<U>(out[i]) + static_cast<U>(in[i]));
    }
  } else {
    for (size_t i = 0; i < count; ++i) out[i] += in[i];
  }
}

// min/max propagate NaN like numpy.minimum/maximum, so a NaN gradient is not
// silently dropped by one rank and kept by another. (For integers a != a is
// false and folds away.)
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

void bit_or_kernel(void* accumulator, const void* incoming, size_t count) {
  uint8_t* __restrict out = static_cast<uint8_t*>(accumulator);
  const uint8_t* __restrict in = static_cast<const uint8_t*>(incoming);
  for (size_t i = 0; i < count; ++i) out[i] |= in[i];
}

// float16: widen, combine in float32, round back. Processed in short runs so
// that the widening loops vectorise where the compiler can.
template <void (*Float32Kernel)(void*, const void*, size_t)>
void half_kernel(void* accumulator, const void* incoming, size_t count) {
  uint16_t* out = static_cast<uint16_t*>(accumulator);
  const uint16_t* in = static_cast<const uint16_t*>(incoming);
  constexpr size_t kRun = 256;
  float wide_out[kRun];
  float wide_in[kRun];
  for (size_t start = 0; start < count; start += kRun) {
    const size_t n = count - start < kRun ? count - start : kRun;
    for (size_t i = 0; i < n; ++i) {
      wide_out[i] = half_to_float(out[start + i]);
      wide_in[i] = half_to_float(in[start + i]);
    }
    Float32Kernel(wide_out, wide_in, n);
    for (size_t i = 0; i < n; ++i) out[start + i] = float_to_half(wide_out[i]);
  }
}

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define COLLECTIVE_HAVE_F16C 1
// The same widen-combine-round, eight lanes at a time with the F16C
// conversion instructions (IEEE round to nearest even, like float_to_half),
// compiled for F16C/AVX only here and chosen at run time when the CPU has
// them, so the library still runs on CPUs without. min/max keep the scalar
// rule (a < b || a is NaN) ? a : b: the AVX instruction returns the second
// operand when either is NaN, and a NaN `a` is then blended back in.
enum class HalfOp { kSum, kMin, kMax };

template <HalfOp Op>
__attribute__((target("avx,f16c"))) void half_kernel_f16c(void* accumulator, const void* incoming,
                                                          size_t count) {
  uint16_t* out = static_cast<uint16_t*>(accumulator);
  const uint16_t* in = static_cast<const uint16_t*>(incoming);
  size_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(out + i)));
    const __m256 b = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i)));
    __m256 r;
    if constexpr (Op == HalfOp::kSum) {
      r = _mm256_add_ps(a, b);
    } else {
      r = Op == HalfOp::kMin ? _mm256_min_ps(a, b) : _mm256_max_ps(a, b);
      r = _mm256_blendv_ps(r, a, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT));
  }
  if (i < count) {
    constexpr auto tail = Op == HalfOp::kSum   ? &half_kernel<&sum_kernel<float>>
                          : Op == HalfOp::kMin ? &half_kernel<&min_kernel<float>>
                                               : &half_kernel<&max_kernel<float>>;
    tail(out + i, in + i, count - i);
  }
}

bool cpu_has_f16c() {
  static const bool has = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return has;
}
#endif

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
    case ReduceOp::kBitOr:
      break;
  }
  throw InvalidArgumentError("unknown reduce op");
}

ReduceFn half_kernel_for(ReduceOp op) {
#ifdef COLLECTIVE_HAVE_F16C
  if (cpu_has_f16c()) {
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kMean:
        return &half_kernel_f16c<HalfOp::kSum>;
      case ReduceOp::kMin:
        return &half_kernel_f16c<HalfOp::kMin>;
      case ReduceOp::kMax:
        return &half_kernel_f16c<HalfOp::kMax>;
      case ReduceOp::kBitOr:
        break;
    }
  }
#endif
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kMean:
      return &half_kernel<&sum_kernel<float>>;
    case ReduceOp::kMin:
      return &half_kernel<&min_kernel<float>>;
    case ReduceOp::kMax:
      return &half_kernel<&max_kernel<float>>;
    case ReduceOp::kBitOr:
      break;
  }
  throw InvalidArgumentError("unknown reduce op");
}

template <typename T>
void divide(void* data, size_t count, size_t divisor) {
  T* values = static_cast<T*>(data);
  const T d = static_cast<T>(divisor);
  for (size_t i = 0; i < count; ++i) values[i] /= d;
}

}  // namespace

ReduceFn reduce_kernel(DataType type, ReduceOp op) {
  check_op_supported(type, op);
  switch (type) {
    case DataType::kFloat32:
      return kernel_for<float>(op);
    case DataType::kFloat64:
      return kernel_for<double>(op);
    case DataType::kFloat16:
      return half_kernel_for(op);
    case DataType::kInt32:
      return kernel_for<int32_t>(op);
    case DataType::kInt64:
      return kernel_for<int64_t>(op);
    case DataType::kUint8:
      if (op == ReduceOp::kBitOr) return &bit_or_kernel;
      return kernel_for<uint8_t>(op);
  }
  throw InvalidArgumentError("unknown data type");
}

void finish_mean(void* data, size_t count, DataType type, size_t divisor) {
  switch (type) {
    case DataType::kFloat32:
      return divide<float>(data, count, divisor);
    case DataType::kFloat64:
      return divide<double>(data, count, divisor);
    case DataType::kFloat16: {
      uint16_t* values = static_cast<uint16_t*>(data);
      const float d = static_cast<float>(divisor);
      for (size_t i = 0; i < count; ++i) values[i] = float_to_half(half_to_float(values[i]) / d);
      return;
    }
    default:
      throw InvalidArgumentError(std::string("mean is not defined for ") + name_of(type));
  }
}

}  // namespace adaptrain::collective
