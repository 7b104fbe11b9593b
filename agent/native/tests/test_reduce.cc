// Reduce kernels, including float16's widen-combine-round, and op checks.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "collectives/reduce.h"
#include "core/errors.h"
#include "unit_tests.h"

using namespace adaptrain::collective;

namespace {

bool is_half_nan(uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x03FF) != 0; }

uint16_t half(float value) { return float_to_half(value); }

}  // namespace

TEST(every_float16_survives_a_round_trip_through_float32) {
  for (uint32_t bits = 0; bits <= 0xFFFF; ++bits) {
    const uint16_t h = static_cast<uint16_t>(bits);
    const uint16_t back = float_to_half(half_to_float(h));
    if (is_half_nan(h)) {
      CHECK(is_half_nan(back));
      CHECK(std::isnan(half_to_float(h)));
    } else {
      CHECK_EQ(back, h);
    }
  }
}

TEST(float16_decodes_known_values) {
  CHECK_EQ(half_to_float(0x3C00), 1.0f);
  CHECK_EQ(half_to_float(0xC000), -2.0f);
  CHECK_EQ(half_to_float(0x7BFF), 65504.0f);
  CHECK_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK_EQ(half_to_float(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  CHECK(std::isinf(half_to_float(0x7C00)) && half_to_float(0x7C00) > 0);
  CHECK(std::signbit(half_to_float(0x8000)) && half_to_float(0x8000) == 0.0f);
}

TEST(float16_rounds_to_nearest_with_ties_to_even) {
  CHECK_EQ(half(1.0f), 0x3C00);
  CHECK_EQ(half(1.0f + std::ldexp(1.0f, -11)), 0x3C00);      // tie, 0x3C00 is even
  CHECK_EQ(half(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);  // tie, 0x3C02 is even
  CHECK_EQ(half(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)),
           0x3C01);  // just above the tie
  CHECK_EQ(half(65504.0f), 0x7BFF);
  CHECK_EQ(half(65519.0f), 0x7BFF);
  CHECK_EQ(half(65520.0f), 0x7C00);  // tie between 65504 and 2^16 goes to infinity
  CHECK_EQ(half(-1e9f), 0xFC00);
  CHECK_EQ(half(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and the smallest subnormal
  CHECK_EQ(half(std::ldexp(1.5f, -25)), 0x0001);
  CHECK_EQ(half(std::ldexp(3.0f, -25)), 0x0002);     // tie between 1 and 2 subnormal units
  CHECK_EQ(half(std::ldexp(1023.5f, -24)), 0x0400);  // rounds up into the normals
  CHECK_EQ(half(-0.0f), 0x8000);
  CHECK(is_half_nan(half(std::numeric_limits<float>::quiet_NaN())));
}

TEST(float16_sum_is_computed_in_float32_and_rounded_once_per_step) {
  std::vector<uint16_t> acc = {half(1.0f), half(2048.0f), half(0.1f), half(65504.0f)};
  const std::vector<uint16_t> in = {half(std::ldexp(1.0f, -11)), half(1.0f), half(0.2f),
                                    half(65504.0f)};
  reduce_kernel(DataType::kFloat16, ReduceOp::kSum)(acc.data(), in.data(), acc.size());
  CHECK_EQ(acc[0], half(1.0f));     // 1 + 2^-11 is a tie, to even
  CHECK_EQ(acc[1], half(2048.0f));  // 2049 is not a float16; tie to even 2048
  CHECK_EQ(acc[2], half(half_to_float(half(0.1f)) + half_to_float(half(0.2f))));
  CHECK_EQ(acc[3], 0x7C00);  // overflow to infinity, like numpy
}

TEST(float16_min_and_max_propagate_nan) {
  const uint16_t nan = half(std::numeric_limits<float>::quiet_NaN());
  std::vector<uint16_t> acc = {half(1.0f), nan, half(-3.0f)};
  const std::vector<uint16_t> in = {nan, half(2.0f), half(-4.0f)};
  std::vector<uint16_t> high = acc;
  reduce_kernel(DataType::kFloat16, ReduceOp::kMin)(acc.data(), in.data(), acc.size());
  reduce_kernel(DataType::kFloat16, ReduceOp::kMax)(high.data(), in.data(), high.size());
  CHECK(is_half_nan(acc[0]) && is_half_nan(acc[1]));
  CHECK_EQ(acc[2], half(-4.0f));
  CHECK(is_half_nan(high[0]) && is_half_nan(high[1]));
  CHECK_EQ(high[2], half(-3.0f));
}

TEST(float32_and_float64_kernels_match_plain_arithmetic) {
  std::vector<float> f = {1.5f, -2.0f, 0.0f};
  const std::vector<float> g = {0.25f, 3.0f, -0.0f};
  reduce_kernel(DataType::kFloat32, ReduceOp::kSum)(f.data(), g.data(), f.size());
  CHECK_EQ(f[0], 1.75f);
  CHECK_EQ(f[1], 1.0f);
  std::vector<double> d = {1.0, std::nan(""), 5.0};
  const std::vector<double> e = {2.0, 0.0, std::nan("")};
  reduce_kernel(DataType::kFloat64, ReduceOp::kMax)(d.data(), e.data(), d.size());
  CHECK_EQ(d[0], 2.0);
  CHECK(std::isnan(d[1]) && std::isnan(d[2]));
}

TEST(integer_sums_wrap_around_like_numpy) {
  std::vector<int32_t> a = {std::numeric_limits<int32_t>::max(), -5,
                            std::numeric_limits<int32_t>::min()};
  const std::vector<int32_t> b = {1, 7, -1};
  reduce_kernel(DataType::kInt32, ReduceOp::kSum)(a.data(), b.data(), a.size());
  CHECK_EQ(a[0], std::numeric_limits<int32_t>::min());
  CHECK_EQ(a[1], 2);
  CHECK_EQ(a[2], std::numeric_limits<int32_t>::max());
  std::vector<int64_t> c = {std::numeric_limits<int64_t>::max(), 3};
  const std::vector<int64_t> d = {2, -9};
  reduce_kernel(DataType::kInt64, ReduceOp::kSum)(c.data(), d.data(), c.size());
  CHECK_EQ(c[0], std::numeric_limits<int64_t>::min() + 1);
  reduce_kernel(DataType::kInt64, ReduceOp::kMin)(c.data(), d.data(), c.size());
  CHECK_EQ(c[1], int64_t{-9});
}

TEST(mean_divides_once_in_the_element_type) {
  std::vector<float> f = {3.0f, -1.0f};
  finish_mean(f.data(), f.size(), DataType::kFloat32, 4);
  CHECK_EQ(f[0], 0.75f);
  std::vector<double> d = {1.0};
  finish_mean(d.data(), d.size(), DataType::kFloat64, 3);
  CHECK_EQ(d[0], 1.0 / 3.0);
  std::vector<uint16_t> h = {half(3.0f)};
  finish_mean(h.data(), h.size(), DataType::kFloat16, 2);
  CHECK_EQ(h[0], half(1.5f));
}

TEST(mean_of_integers_is_refused_with_a_fix) {
  CHECK_THROWS(check_op_supported(DataType::kInt32, ReduceOp::kMean), InvalidArgumentError,
               "op=\"sum\"");
  CHECK_THROWS(reduce_kernel(DataType::kInt64, ReduceOp::kMean), InvalidArgumentError, "int64");
  CHECK_THROWS(check_op_supported(DataType::kFloat32, ReduceOp::kBitOr), InvalidArgumentError,
               "uint8");
  check_op_supported(DataType::kFloat16, ReduceOp::kMean);  // fine
}

TEST(bitwise_or_reassembles_blocks_exactly) {
  std::vector<uint8_t> a = {0x00, 0xAB, 0x00};
  const std::vector<uint8_t> b = {0x80, 0x00, 0x00};
  reduce_kernel(DataType::kUint8, ReduceOp::kBitOr)(a.data(), b.data(), a.size());
  CHECK_EQ(a[0], uint8_t{0x80});
  CHECK_EQ(a[1], uint8_t{0xAB});
  CHECK_EQ(a[2], uint8_t{0x00});
}

TEST(float16_kernels_agree_with_the_scalar_rule_for_every_value) {
  // Whatever path reduce_kernel picks (F16C when the CPU has it), each
  // element must equal widen, combine in float32, round back.
  std::vector<uint16_t> a(65536), b(65536);
  for (uint32_t i = 0; i < 65536; ++i) {
    a[i] = static_cast<uint16_t>(i);
    b[i] = static_cast<uint16_t>((i * 40503u + 12345u) & 0xFFFF);  // a permutation
  }
  for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMin, ReduceOp::kMax}) {
    std::vector<uint16_t> got = a;
    reduce_kernel(DataType::kFloat16, op)(got.data(), b.data(), got.size());
    for (size_t i = 0; i < got.size(); ++i) {
      const float x = half_to_float(a[i]);
      const float y = half_to_float(b[i]);
      float wide;
      if (op == ReduceOp::kSum) {
        wide = x + y;
      } else if (op == ReduceOp::kMin) {
        wide = (x < y || x != x) ? x : y;
      } else {
        wide = (x > y || x != x) ? x : y;
      }
      const uint16_t expected = float_to_half(wide);
      if (is_half_nan(expected)) {
        CHECK(is_half_nan(got[i]));
      } else {
        CHECK_EQ(got[i], expected);
      }
    }
  }
}
