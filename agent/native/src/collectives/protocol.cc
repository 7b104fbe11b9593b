#include "collectives/protocol.h"

#include <algorithm>

#include "collectives/algorithm.h"
#include "core/errors.h"
#include "core/types.h"
#include "core/wire.h"

namespace adaptrain::collective {
namespace {

constexpr uint32_t kMessageMagic = 0x4D4C4F43;  // "COLM" on the wire

using wire::get32;
using wire::get64;
using wire::put32;
using wire::put64;

}  // namespace

const char* name_of(CollectiveKind kind) {
  switch (kind) {
    case CollectiveKind::kAllreduce:
      return "allreduce";
    case CollectiveKind::kBarrier:
      return "barrier";
    case CollectiveKind::kBroadcast:
      return "broadcast";
    case CollectiveKind::kAllgather:
      return "allgather";
    case CollectiveKind::kReduceScatter:
      return "reduce_scatter";
    case CollectiveKind::kConsensus:
      return "consensus";
  }
  return "an unknown collective";
}

HeaderBytes encode_header(const MessageHeader& header) {
  HeaderBytes bytes{};
  put32(&bytes[0], kMessageMagic);
  put32(&bytes[4], header.kind);
  put64(&bytes[8], header.sequence);
  put64(&bytes[16], header.count);
  put64(&bytes[24], header.shape_hash);
  put32(&bytes[32], header.dtype);
  put32(&bytes[36], header.op);
  put32(&bytes[40], header.algorithm);
  put32(&bytes[44], header.root);
  return bytes;
}

bool decode_header(const uint8_t* bytes, MessageHeader* header) {
  if (get32(bytes) != kMessageMagic) return false;
  header->kind = get32(bytes + 4);
  header->sequence = get64(bytes + 8);
  header->count = get64(bytes + 16);
  header->shape_hash = get64(bytes + 24);
  header->dtype = get32(bytes + 32);
  header->op = get32(bytes + 36);
  header->algorithm = get32(bytes + 40);
  header->root = get32(bytes + 44);
  return true;
}

uint64_t hash_shape(const std::vector<size_t>& shape) {
  uint64_t hash = 1469598103934665603ull;
  auto mix = [&](uint64_t value) {
    for (int i = 0; i < 8; ++i) {
      hash ^= (value >> (8 * i)) & 0xFF;
      hash *= 1099511628211ull;
    }
  };
  mix(shape.size());
  for (size_t dimension : shape) mix(dimension);
  return hash;
}

std::string describe(const MessageHeader& header) {
  const auto kind = static_cast<CollectiveKind>(header.kind);
  std::string text = std::string(name_of(kind)) + " #" + std::to_string(header.sequence);
  if (kind == CollectiveKind::kBarrier) return text;
  text +=
      " of " + std::to_string(header.count) + " " + name_of(static_cast<DataType>(header.dtype));
  std::string details;
  if (header.op != 0) details = name_of(static_cast<ReduceOp>(header.op));
  if (kind == CollectiveKind::kBroadcast) details = "from rank " + std::to_string(header.root);
  if (header.algorithm != 0) {
    details += (details.empty() ? "" : ", ") +
               std::string(name_of(static_cast<Algorithm>(header.algorithm)));
  }
  if (!details.empty()) text += " (" + details + ")";
  return text;
}

void check_header(const MessageHeader& expected, const uint8_t* received_bytes,
                  const Connection& sender) {
  MessageHeader received;
  if (!decode_header(received_bytes, &received)) {
    throw IoError("received garbage instead of a collective header from " + sender.describe_peer() +
                  "; the byte stream is out of step");
  }
  if (received.kind == expected.kind && received.sequence == expected.sequence &&
      received.count == expected.count && received.shape_hash == expected.shape_hash &&
      received.dtype == expected.dtype && received.op == expected.op &&
      received.algorithm == expected.algorithm && received.root == expected.root) {
    return;
  }
  std::string ours = describe(expected);
  std::string theirs = describe(received);
  if (ours == theirs) {
    ours += " with one array shape";
    theirs += " with another";
  }
  throw IoError("this rank is in " + ours + " but " + sender.describe_peer() + " sent " + theirs +
                "; every rank must call the same collectives in the same order with the same "
                "shape, dtype, op, root and algorithm");
}

StrayHeaderWatch::StrayHeaderWatch(Transport& transport, const MessageHeader& expected,
                                   const std::vector<int>& used)
    : expected_(expected) {
  for (int peer = 0; peer < transport.size(); ++peer) {
    if (peer == transport.rank() || !transport.has_connection(peer)) continue;
    if (std::find(used.begin(), used.end(), peer) != used.end()) continue;
    watched_.push_back(&transport.connection(peer));
  }
}

void StrayHeaderWatch::add_requests(std::vector<WaitRequest>& requests) const {
  for (Connection* connection : watched_) requests.push_back(WaitRequest{connection, false, true});
}

void StrayHeaderWatch::check() {
  for (size_t i = 0; i < watched_.size();) {
    HeaderBytes bytes{};
    bool closed = false;
    const size_t seen = watched_[i]->peek_some(bytes.data(), bytes.size(), &closed);
    MessageHeader header;
    if (seen == kHeaderBytes && decode_header(bytes.data(), &header) &&
        header.sequence == expected_.sequence) {
      check_header(expected_, bytes.data(), *watched_[i]);
      // Identical header on a link this call does not use: the peer runs
      // the same call on another topology, which check_header cannot see.
      throw IoError("this rank is in " + describe(expected_) + " but " +
                    watched_[i]->describe_peer() +
                    " sent it data on a link this algorithm does not use; the ranks disagree about "
                    "the topology");
    }
    if (closed || seen == kHeaderBytes) {
      watched_.erase(watched_.begin() + static_cast<long>(i));  // closed, or a later call's header
      continue;
    }
    ++i;  // nothing yet, or half a header: look again after the next wait
  }
}

}  // namespace adaptrain::collective
