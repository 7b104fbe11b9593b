// The collective header's wire format, its checks and its descriptions.
#include <string>
#include <vector>

#include "collectives/algorithm.h"
#include "collectives/protocol.h"
#include "core/errors.h"
#include "core/types.h"
#include "unit_tests.h"

using namespace adaptrain::collective;

namespace {

// A connection that only has a name: check_header needs no more.
class NamedConnection final : public Connection {
 public:
  int peer_rank() const override { return 3; }
  const std::string& peer_address() const override { return address_; }
  size_t send_some(const void*, size_t) override { return 0; }
  size_t recv_some(void*, size_t) override { return 0; }
  size_t peek_some(void*, size_t, bool* closed) override {
    *closed = false;
    return 0;
  }
  void close() override {}
  void poll_target(bool, bool, pollfd* target) const override { *target = pollfd{-1, 0, 0}; }

 private:
  std::string address_ = "10.0.0.4:41003";
};

MessageHeader sample() {
  MessageHeader header;
  header.kind = static_cast<uint32_t>(CollectiveKind::kAllreduce);
  header.sequence = 0x0102030405060708ull;
  header.count = 1001;
  header.shape_hash = hash_shape({7, 11, 13});
  header.dtype = static_cast<uint32_t>(DataType::kFloat16);
  header.op = static_cast<uint32_t>(ReduceOp::kMean);
  header.algorithm = static_cast<uint32_t>(Algorithm::kTree);
  header.root = 2;
  return header;
}

}  // namespace

TEST(header_is_48_little_endian_bytes_opening_with_colm) {
  const HeaderBytes bytes = encode_header(sample());
  CHECK_EQ(bytes.size(), size_t{48});
  CHECK_EQ(std::string(bytes.begin(), bytes.begin() + 4), std::string("COLM"));
  CHECK_EQ(bytes[4], uint8_t{1});     // kind
  CHECK_EQ(bytes[8], uint8_t{0x08});  // sequence, least significant byte first
  CHECK_EQ(bytes[15], uint8_t{0x01});
  CHECK_EQ(bytes[16], uint8_t{1001 & 0xFF});
  CHECK_EQ(bytes[17], uint8_t{1001 >> 8});
  CHECK_EQ(bytes[32], uint8_t{3});  // dtype float16
  CHECK_EQ(bytes[36], uint8_t{2});  // op mean
  CHECK_EQ(bytes[40], uint8_t{3});  // algorithm tree
  CHECK_EQ(bytes[44], uint8_t{2});  // root
}

TEST(header_decodes_to_what_was_encoded) {
  const MessageHeader original = sample();
  const HeaderBytes bytes = encode_header(original);
  MessageHeader decoded;
  CHECK(decode_header(bytes.data(), &decoded));
  CHECK_EQ(decoded.kind, original.kind);
  CHECK_EQ(decoded.sequence, original.sequence);
  CHECK_EQ(decoded.count, original.count);
  CHECK_EQ(decoded.shape_hash, original.shape_hash);
  CHECK_EQ(decoded.dtype, original.dtype);
  CHECK_EQ(decoded.op, original.op);
  CHECK_EQ(decoded.algorithm, original.algorithm);
  CHECK_EQ(decoded.root, original.root);
}

TEST(header_without_the_magic_is_not_decoded) {
  HeaderBytes bytes = encode_header(sample());
  bytes[0] ^= 0xFF;
  MessageHeader decoded;
  CHECK(!decode_header(bytes.data(), &decoded));
  NamedConnection peer;
  CHECK_THROWS(check_header(sample(), bytes.data(), peer), IoError, "garbage");
}

TEST(shape_hash_tells_transposed_shapes_apart) {
  CHECK(hash_shape({2, 3}) != hash_shape({3, 2}));
  CHECK(hash_shape({6}) != hash_shape({6, 1}));
  CHECK(hash_shape({}) != hash_shape({1}));
  CHECK_EQ(hash_shape({4, 5}), hash_shape({4, 5}));
}

TEST(matching_headers_pass_the_check) {
  NamedConnection peer;
  const HeaderBytes bytes = encode_header(sample());
  check_header(sample(), bytes.data(), peer);
}

TEST(a_mismatch_names_both_calls_and_the_peer) {
  NamedConnection peer;
  MessageHeader theirs = sample();
  theirs.dtype = static_cast<uint32_t>(DataType::kFloat32);
  theirs.count = 1000;
  const HeaderBytes bytes = encode_header(theirs);
  CHECK_THROWS(check_header(sample(), bytes.data(), peer), IoError, "of 1001 float16 (mean, tree)");
  CHECK_THROWS(check_header(sample(), bytes.data(), peer), IoError,
               "rank 3 (10.0.0.4:41003) sent allreduce");
  CHECK_THROWS(check_header(sample(), bytes.data(), peer), IoError, "of 1000 float32");
}

TEST(a_shape_only_mismatch_says_so) {
  NamedConnection peer;
  MessageHeader theirs = sample();
  theirs.shape_hash = hash_shape({1001});
  const HeaderBytes bytes = encode_header(theirs);
  CHECK_THROWS(check_header(sample(), bytes.data(), peer), IoError, "with one array shape");
}

TEST(descriptions_read_as_calls) {
  MessageHeader broadcast;
  broadcast.kind = static_cast<uint32_t>(CollectiveKind::kBroadcast);
  broadcast.sequence = 4;
  broadcast.count = 10;
  broadcast.dtype = static_cast<uint32_t>(DataType::kInt64);
  broadcast.algorithm = static_cast<uint32_t>(Algorithm::kRing);
  broadcast.root = 1;
  CHECK_EQ(describe(broadcast), std::string("broadcast #4 of 10 int64 (from rank 1, ring)"));
  MessageHeader barrier;
  barrier.kind = static_cast<uint32_t>(CollectiveKind::kBarrier);
  barrier.sequence = 9;
  CHECK_EQ(describe(barrier), std::string("barrier #9"));
}
