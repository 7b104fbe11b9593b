// Wire format of peer-to-peer blob requests (Communicator::publish/request).
//
// A rank publishes named arrays; any other rank may fetch the latest copy of
// one at any time, without the owner making a matching call (pair averaging
// and AD-PSGD pull a random peer's model while that peer keeps training). So
// blobs travel on their own connections to a small per-communicator server,
// never on the collective links, whose byte streams must stay in step.
//
// A request is a 48-byte little-endian header followed by the blob's name; the
// answer is a 48-byte header followed, when the status is kOk, by exactly
// payload_bytes of data:
//
//   request: 0 magic u32 "BLRQ" | 4 wire version u32 | 8 group id u64 |
//            16 cluster version u64 | 24 requester rank u32 | 28 dtype u32 |
//            32 count u64 | 40 name bytes u32 | 44 reserved u32
//   reply:   0 magic u32 "BLRS" | 4 status u32 | 8 dtype u32 | 12 owner rank u32 |
//            16 count u64 | 24 blob version u64 | 32 payload bytes u64 |
//            40 cluster version u64
//
// Before its first request a requester proves it is a member of this run
// (auth/fabric_auth.h, channel "blob"): the owner sends a challenge as soon as
// it accepts, the requester answers with its nonce and proof, and the owner
// answers with a welcome carrying its own proof, or a refusal and a hang-up.
// These three messages are native-endian structs, as the collective handshake:
//
//   challenge: "BLCH" u32 | wire version u32 | owner rank u32 | world size u32 |
//              group id u64 | cluster version u64 | nonce 16 bytes
//   proof:     "BLPF" u32 | wire version u32 | requester rank u32 | reserved u32 |
//              nonce 16 bytes | HMAC 32 bytes
//   welcome:   "BLWC" u32 | status u32 (0 member, 1 refused) | HMAC 32 bytes
//
// The requester says which dtype and element count it expects; the owner
// answers with what it has, and sends the data only when both match, so a
// mismatch costs one round trip, leaves the connection usable and becomes a
// ValueError that names the blob and both sides' dtype and count.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "auth/fabric_auth.h"
#include "core/types.h"

namespace adaptrain::collective {

constexpr size_t kBlobHeaderBytes = 48;
constexpr uint32_t kBlobWireVersion = 2;  // 2: the membership handshake
// Names are keys, not data: long enough for "layer.17.attention.weight@v3".
constexpr size_t kMaxBlobNameBytes = 1024;

constexpr uint32_t kBlobChallengeMagic = 0x48434C42;  // "BLCH"
constexpr uint32_t kBlobProofMagic = 0x46504C42;      // "BLPF"
constexpr uint32_t kBlobWelcomeMagic = 0x43574C42;    // "BLWC"
// A request's magic ("BLRQ"), the same in every wire version: a requester that
// sends one before proving itself speaks another version (1: before the proof).
constexpr uint32_t kBlobRequestMagicOfAnyVersion = 0x51524C42;

struct BlobChallenge {
  uint32_t magic;
  uint32_t version;
  uint32_t owner;
  uint32_t world_size;
  uint64_t group_id;
  uint64_t cluster_version;
  uint8_t nonce[kNonceBytes];
};

struct BlobProof {
  uint32_t magic;
  uint32_t version;
  uint32_t requester;
  uint32_t reserved;
  uint8_t nonce[kNonceBytes];
  uint8_t proof[32];
};

struct BlobWelcome {
  uint32_t magic;
  uint32_t status;  // 0: a member; 1: refused (the owner hangs up)
  uint8_t proof[32];
};

using BlobHeaderBytes = std::array<uint8_t, kBlobHeaderBytes>;

struct BlobRequest {
  uint64_t group_id = 0;
  uint64_t cluster_version = 0;
  uint32_t requester = 0;
  uint32_t dtype = 0;  // DataType
  uint64_t count = 0;  // elements
  uint32_t name_bytes = 0;
};

enum class BlobStatus : uint32_t {
  kOk = 0,
  kUnknownName = 1,  // nothing published under that name (yet)
  kMismatch = 2,     // dtype or count differ; the reply carries the owner's
  kWrongGroup = 3,   // another group or cluster version: a stale address
  kBadRequest = 4,   // name too long or empty, unknown wire version
};

struct BlobReply {
  BlobStatus status = BlobStatus::kOk;
  uint32_t dtype = 0;
  uint32_t owner = 0;
  uint64_t count = 0;
  uint64_t blob_version = 0;  // how many times the owner published this name
  uint64_t payload_bytes = 0;
  uint64_t cluster_version = 0;
};

BlobHeaderBytes encode_blob_request(const BlobRequest& request);
// False when the bytes are not a blob request of this wire version.
bool decode_blob_request(const uint8_t* bytes, BlobRequest* request);
BlobHeaderBytes encode_blob_reply(const BlobReply& reply);
// False when the bytes do not start with the reply magic.
bool decode_blob_reply(const uint8_t* bytes, BlobReply* reply);

// Throws InvalidArgumentError unless `name` is a usable blob name.
void check_blob_name(const std::string& name);

// What the owner answers to `request` for a blob it holds (`found`) with
// `dtype` and `count` elements, or does not hold; `own_group` and
// `own_cluster_version` identify the owner's group.
BlobReply answer_blob_request(const BlobRequest& request, uint64_t own_group,
                              uint64_t own_cluster_version, uint32_t owner, bool found,
                              DataType dtype, uint64_t count, uint64_t blob_version);

// On the requester: returns normally when `reply` carries the data asked
// for; otherwise throws InvalidArgumentError (unknown name, dtype or count
// mismatch: the connection stays usable) or IoError (another group, a bad
// reply: drop the connection). `peer` is "rank 2 (10.0.0.3:41002)".
void check_blob_reply(const BlobReply& reply, const std::string& name, DataType dtype,
                      uint64_t count, const std::string& peer);

}  // namespace adaptrain::collective
