// The blob request/reply wire format, the owner's answer and the requester's
// checks (blob_protocol.h), and the blob store's versions.
#include <string>
#include <vector>

#include "core/errors.h"
#include "core/types.h"
#include "p2p/blob_protocol.h"
#include "p2p/blobs.h"
#include "unit_tests.h"

using namespace adaptrain::collective;

namespace {

BlobRequest sample_request() {
  BlobRequest request;
  request.group_id = 0x1122334455667788ull;
  request.cluster_version = 7;
  request.requester = 2;
  request.dtype = static_cast<uint32_t>(DataType::kFloat32);
  request.count = 1001;
  request.name_bytes = 5;
  return request;
}

BlobReply answer(const BlobRequest& request, bool found, DataType dtype, uint64_t count) {
  return answer_blob_request(request, 0x1122334455667788ull, 7, 1, found, dtype, count, 3);
}

const std::string kPeer = "rank 1 (10.0.0.2:41001)";

}  // namespace

TEST(blob_request_is_48_little_endian_bytes_opening_with_blrq) {
  const BlobHeaderBytes bytes = encode_blob_request(sample_request());
  CHECK_EQ(bytes.size(), size_t{48});
  CHECK_EQ(std::string(bytes.begin(), bytes.begin() + 4), std::string("BLRQ"));
  CHECK_EQ(bytes[4], uint8_t{2});     // wire version (2: after the membership handshake)
  CHECK_EQ(bytes[8], uint8_t{0x88});  // group id, least significant byte first
  CHECK_EQ(bytes[15], uint8_t{0x11});
  CHECK_EQ(bytes[16], uint8_t{7});  // cluster version
  CHECK_EQ(bytes[24], uint8_t{2});  // requester
  CHECK_EQ(bytes[28], uint8_t{1});  // float32
  CHECK_EQ(bytes[32], uint8_t{1001 & 0xFF});
  CHECK_EQ(bytes[33], uint8_t{1001 >> 8});
  CHECK_EQ(bytes[40], uint8_t{5});  // name bytes
}

TEST(blob_request_decodes_to_what_was_encoded) {
  const BlobRequest original = sample_request();
  const BlobHeaderBytes bytes = encode_blob_request(original);
  BlobRequest decoded;
  CHECK(decode_blob_request(bytes.data(), &decoded));
  CHECK_EQ(decoded.group_id, original.group_id);
  CHECK_EQ(decoded.cluster_version, original.cluster_version);
  CHECK_EQ(decoded.requester, original.requester);
  CHECK_EQ(decoded.dtype, original.dtype);
  CHECK_EQ(decoded.count, original.count);
  CHECK_EQ(decoded.name_bytes, original.name_bytes);
}

TEST(blob_request_with_another_magic_or_wire_version_is_not_decoded) {
  BlobHeaderBytes bytes = encode_blob_request(sample_request());
  BlobRequest decoded;
  bytes[0] ^= 0xFF;
  CHECK(!decode_blob_request(bytes.data(), &decoded));
  bytes = encode_blob_request(sample_request());
  bytes[4] = 9;
  CHECK(!decode_blob_request(bytes.data(), &decoded));
  // A collective header is not a blob request either.
  bytes = encode_blob_request(sample_request());
  bytes[0] = 'C';
  bytes[1] = 'O';
  bytes[2] = 'L';
  bytes[3] = 'M';
  CHECK(!decode_blob_request(bytes.data(), &decoded));
}

TEST(blob_reply_round_trips_and_opens_with_blrs) {
  BlobReply original;
  original.status = BlobStatus::kMismatch;
  original.dtype = static_cast<uint32_t>(DataType::kInt64);
  original.owner = 3;
  original.count = 1ull << 40;
  original.blob_version = 12;
  original.payload_bytes = 8ull << 40;
  original.cluster_version = 5;
  const BlobHeaderBytes bytes = encode_blob_reply(original);
  CHECK_EQ(std::string(bytes.begin(), bytes.begin() + 4), std::string("BLRS"));
  CHECK_EQ(bytes[4], uint8_t{2});   // status
  CHECK_EQ(bytes[21], uint8_t{1});  // 1 << 40: byte 5 of the count
  BlobReply decoded;
  CHECK(decode_blob_reply(bytes.data(), &decoded));
  CHECK(decoded.status == original.status);
  CHECK_EQ(decoded.dtype, original.dtype);
  CHECK_EQ(decoded.owner, original.owner);
  CHECK_EQ(decoded.count, original.count);
  CHECK_EQ(decoded.blob_version, original.blob_version);
  CHECK_EQ(decoded.payload_bytes, original.payload_bytes);
  CHECK_EQ(decoded.cluster_version, original.cluster_version);
  BlobHeaderBytes garbage = bytes;
  garbage[3] = 0;
  CHECK(!decode_blob_reply(garbage.data(), &decoded));
}

TEST(owner_sends_the_blob_only_when_dtype_and_count_match) {
  const BlobReply ok = answer(sample_request(), true, DataType::kFloat32, 1001);
  CHECK(ok.status == BlobStatus::kOk);
  CHECK_EQ(ok.payload_bytes, uint64_t{4004});
  CHECK_EQ(ok.blob_version, uint64_t{3});
  check_blob_reply(ok, "w", DataType::kFloat32, 1001, kPeer);

  const BlobReply wrong_count = answer(sample_request(), true, DataType::kFloat32, 1000);
  CHECK(wrong_count.status == BlobStatus::kMismatch);
  CHECK_EQ(wrong_count.payload_bytes, uint64_t{0});
  CHECK_THROWS(check_blob_reply(wrong_count, "w", DataType::kFloat32, 1001, kPeer),
               InvalidArgumentError,
               "blob \"w\" of rank 1 (10.0.0.2:41001) holds 1000 float32 elements but `out` has "
               "1001 float32");

  const BlobReply wrong_dtype = answer(sample_request(), true, DataType::kFloat64, 1001);
  CHECK(wrong_dtype.status == BlobStatus::kMismatch);
  CHECK_THROWS(check_blob_reply(wrong_dtype, "w", DataType::kFloat32, 1001, kPeer),
               InvalidArgumentError, "holds 1001 float64 elements");
}

TEST(unknown_blob_is_a_value_error_naming_blob_and_peer) {
  const BlobReply missing = answer(sample_request(), false, DataType::kUint8, 0);
  CHECK(missing.status == BlobStatus::kUnknownName);
  CHECK_THROWS(check_blob_reply(missing, "model", DataType::kFloat32, 1001, kPeer),
               InvalidArgumentError, "blob \"model\" of rank 1 (10.0.0.2:41001) does not exist");
}

TEST(request_from_another_group_or_cluster_version_is_refused) {
  BlobRequest stale = sample_request();
  stale.cluster_version = 6;
  const BlobReply reply = answer(stale, true, DataType::kFloat32, 1001);
  CHECK(reply.status == BlobStatus::kWrongGroup);
  CHECK_EQ(reply.cluster_version, uint64_t{7});
  CHECK_THROWS(check_blob_reply(reply, "w", DataType::kFloat32, 1001, kPeer), IoError,
               "cluster version 7");
  BlobRequest stranger = sample_request();
  stranger.group_id = 1;
  CHECK(answer(stranger, true, DataType::kFloat32, 1001).status == BlobStatus::kWrongGroup);
}

TEST(request_with_an_empty_or_huge_name_is_a_bad_request) {
  BlobRequest request = sample_request();
  request.name_bytes = 0;
  CHECK(answer(request, false, DataType::kUint8, 0).status == BlobStatus::kBadRequest);
  request.name_bytes = kMaxBlobNameBytes + 1;
  CHECK(answer(request, false, DataType::kUint8, 0).status == BlobStatus::kBadRequest);
  CHECK_THROWS(check_blob_name(""), InvalidArgumentError, "must not be empty");
  CHECK_THROWS(check_blob_name(std::string(kMaxBlobNameBytes + 1, 'x')), InvalidArgumentError,
               "too long");
  check_blob_name(std::string(kMaxBlobNameBytes, 'x'));
}

TEST(reply_that_breaks_its_promise_is_an_io_error) {
  BlobReply lying = answer(sample_request(), true, DataType::kFloat32, 1001);
  lying.payload_bytes = 4000;
  CHECK_THROWS(check_blob_reply(lying, "w", DataType::kFloat32, 1001, kPeer), IoError,
               "after agreeing");
  BlobReply unknown;
  unknown.status = static_cast<BlobStatus>(42);
  CHECK_THROWS(check_blob_reply(unknown, "w", DataType::kFloat32, 1001, kPeer), IoError,
               "unknown status 42");
}

TEST(blob_store_counts_versions_per_name_and_keeps_copies) {
  BlobStore store;
  std::vector<float> data = {1, 2, 3};
  CHECK_EQ(store.publish("a", data.data(), data.size(), DataType::kFloat32), uint64_t{1});
  data[0] = 9;  // the store holds a copy
  CHECK_EQ(store.find("a")->bytes.size(), size_t{12});
  CHECK_EQ(reinterpret_cast<const float*>(store.find("a")->bytes.data())[0], 1.0f);
  const auto first = store.find("a");
  CHECK_EQ(store.publish("a", data.data(), 2, DataType::kFloat32), uint64_t{2});
  CHECK_EQ(store.publish("b", nullptr, 0, DataType::kInt64), uint64_t{1});
  CHECK_EQ(store.find("a")->version, uint64_t{2});
  CHECK_EQ(store.find("a")->count, uint64_t{2});
  CHECK_EQ(first->count, uint64_t{3});  // a reader of the old copy keeps it
  CHECK(store.find("c") == nullptr);
  CHECK_THROWS(store.publish("", data.data(), 1, DataType::kFloat32), InvalidArgumentError,
               "empty");
}
