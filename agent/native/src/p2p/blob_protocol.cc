#include "p2p/blob_protocol.h"

#include "core/errors.h"
#include "core/wire.h"

namespace adaptrain::collective {
namespace {

constexpr uint32_t kRequestMagic = 0x51524C42;  // "BLRQ" on the wire
constexpr uint32_t kReplyMagic = 0x53524C42;    // "BLRS" on the wire

using wire::get32;
using wire::get64;
using wire::put32;
using wire::put64;

// "float32[1001]", tolerating a dtype code this build does not know.
std::string describe_array(uint32_t dtype, uint64_t count) {
  const bool known = dtype >= static_cast<uint32_t>(DataType::kFloat32) &&
                     dtype <= static_cast<uint32_t>(DataType::kInt64);
  const std::string type =
      known ? name_of(static_cast<DataType>(dtype)) : "dtype #" + std::to_string(dtype);
  return std::to_string(count) + " " + type + " elements";
}

}  // namespace

BlobHeaderBytes encode_blob_request(const BlobRequest& request) {
  BlobHeaderBytes bytes{};
  put32(&bytes[0], kRequestMagic);
  put32(&bytes[4], kBlobWireVersion);
  put64(&bytes[8], request.group_id);
  put64(&bytes[16], request.cluster_version);
  put32(&bytes[24], request.requester);
  put32(&bytes[28], request.dtype);
  put64(&bytes[32], request.count);
  put32(&bytes[40], request.name_bytes);
  return bytes;
}

bool decode_blob_request(const uint8_t* bytes, BlobRequest* request) {
  if (get32(bytes) != kRequestMagic || get32(bytes + 4) != kBlobWireVersion) return false;
  request->group_id = get64(bytes + 8);
  request->cluster_version = get64(bytes + 16);
  request->requester = get32(bytes + 24);
  request->dtype = get32(bytes + 28);
  request->count = get64(bytes + 32);
  request->name_bytes = get32(bytes + 40);
  return true;
}

BlobHeaderBytes encode_blob_reply(const BlobReply& reply) {
  BlobHeaderBytes bytes{};
  put32(&bytes[0], kReplyMagic);
  put32(&bytes[4], static_cast<uint32_t>(reply.status));
  put32(&bytes[8], reply.dtype);
  put32(&bytes[12], reply.owner);
  put64(&bytes[16], reply.count);
  put64(&bytes[24], reply.blob_version);
  put64(&bytes[32], reply.payload_bytes);
  put64(&bytes[40], reply.cluster_version);
  return bytes;
}

bool decode_blob_reply(const uint8_t* bytes, BlobReply* reply) {
  if (get32(bytes) != kReplyMagic) return false;
  reply->status = static_cast<BlobStatus>(get32(bytes + 4));
  reply->dtype = get32(bytes + 8);
  reply->owner = get32(bytes + 12);
  reply->count = get64(bytes + 16);
  reply->blob_version = get64(bytes + 24);
  reply->payload_bytes = get64(bytes + 32);
  reply->cluster_version = get64(bytes + 40);
  return true;
}

void check_blob_name(const std::string& name) {
  if (name.empty()) throw InvalidArgumentError("a blob name must not be empty");
  if (name.size() > kMaxBlobNameBytes) {
    throw InvalidArgumentError("blob name of " + std::to_string(name.size()) +
                               " bytes is too long (at most " + std::to_string(kMaxBlobNameBytes) +
                               ")");
  }
}

BlobReply answer_blob_request(const BlobRequest& request, uint64_t own_group,
                              uint64_t own_cluster_version, uint32_t owner, bool found,
                              DataType dtype, uint64_t count, uint64_t blob_version) {
  BlobReply reply;
  reply.owner = owner;
  reply.cluster_version = own_cluster_version;
  if (request.group_id != own_group || request.cluster_version != own_cluster_version) {
    reply.status = BlobStatus::kWrongGroup;
    return reply;
  }
  if (request.name_bytes == 0 || request.name_bytes > kMaxBlobNameBytes) {
    reply.status = BlobStatus::kBadRequest;
    return reply;
  }
  if (!found) {
    reply.status = BlobStatus::kUnknownName;
    return reply;
  }
  reply.dtype = static_cast<uint32_t>(dtype);
  reply.count = count;
  reply.blob_version = blob_version;
  if (request.dtype != reply.dtype || request.count != count) {
    reply.status = BlobStatus::kMismatch;
    return reply;
  }
  reply.status = BlobStatus::kOk;
  reply.payload_bytes = count * element_size(dtype);
  return reply;
}

void check_blob_reply(const BlobReply& reply, const std::string& name, DataType dtype,
                      uint64_t count, const std::string& peer) {
  const std::string blob = "blob \"" + name + "\" of " + peer;
  switch (reply.status) {
    case BlobStatus::kOk:
      if (reply.dtype != static_cast<uint32_t>(dtype) || reply.count != count ||
          reply.payload_bytes != count * element_size(dtype)) {
        throw IoError(peer + " answered the request for blob \"" + name + "\" with " +
                      describe_array(reply.dtype, reply.count) + " in " +
                      std::to_string(reply.payload_bytes) + " bytes after agreeing to send " +
                      describe_array(static_cast<uint32_t>(dtype), count));
      }
      return;
    case BlobStatus::kUnknownName:
      throw InvalidArgumentError(
          blob + " does not exist: that rank has published nothing under this name");
    case BlobStatus::kMismatch:
      throw InvalidArgumentError(blob + " holds " + describe_array(reply.dtype, reply.count) +
                                 " but `out` has " +
                                 describe_array(static_cast<uint32_t>(dtype), count) +
                                 ": pass an array of the blob's dtype and size");
    case BlobStatus::kWrongGroup:
      throw IoError(peer + " no longer serves this group: it answered from cluster version " +
                    std::to_string(reply.cluster_version) + " or another peer list");
    case BlobStatus::kBadRequest:
      throw IoError(peer + " could not read the request for blob \"" + name + "\"");
  }
  throw IoError(peer + " answered the request for blob \"" + name + "\" with unknown status " +
                std::to_string(static_cast<uint32_t>(reply.status)));
}

}  // namespace adaptrain::collective
