#include "protocol.h"

#include "errors.h"

namespace adaptrain::collective {
namespace {

constexpr uint32_t kMessageMagic = 0x4D4C4F43;  // "COLM" on the wire

std::string describe(const MessageHeader& header) {
  std::string text;
  switch (static_cast<CollectiveKind>(header.kind)) {
    case CollectiveKind::kAllreduce:
      text = "allreduce #" + std::to_string(header.sequence) + " of " + std::to_string(header.count) + " " +
             name_of(static_cast<DataType>(header.dtype)) + " (" + name_of(static_cast<ReduceOp>(header.op)) + ")";
      break;
    case CollectiveKind::kBarrier:
      text = "barrier #" + std::to_string(header.sequence);
      break;
    default:
      text = "an unknown collective (kind " + std::to_string(header.kind) + ")";
  }
  return text;
}

}  // namespace

MessageHeader make_header(CollectiveKind kind, uint64_t sequence, uint64_t count, uint32_t dtype, uint32_t op) {
  return MessageHeader{kMessageMagic, static_cast<uint32_t>(kind), sequence, count, dtype, op};
}

void check_header(const MessageHeader& expected, const MessageHeader& received, const Connection& sender) {
  if (received.magic != kMessageMagic) {
    throw IoError("received garbage instead of a collective header from " + sender.describe_peer() +
                  "; the byte stream is out of step");
  }
  if (received.kind == expected.kind && received.sequence == expected.sequence && received.count == expected.count &&
      received.dtype == expected.dtype && received.op == expected.op) {
    return;
  }
  throw IoError("this rank is in " + describe(expected) + " but " + sender.describe_peer() + " sent " +
                describe(received) +
                "; every rank must call the same collectives in the same order with the same size, dtype and op");
}

}  // namespace adaptrain::collective
