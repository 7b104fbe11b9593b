// The header that opens every collective on every link.
//
// Ranks must call the same collectives, in the same order, with the same
// element count, type and op. Nothing in a byte stream enforces that, and a
// mismatch would otherwise show up as silently wrong numbers or a hang. So
// each collective first sends a 32-byte header describing the call; the
// receiver compares it with its own call and fails loudly on a difference.
// It rides in front of the payload (no extra round trip), so it costs one
// small copy per collective.
#pragma once

#include <cstdint>
#include <string>

#include "transport.h"
#include "types.h"

namespace adaptrain::collective {

enum class CollectiveKind : uint32_t { kAllreduce = 1, kBarrier = 2 };

struct MessageHeader {
  uint32_t magic;
  uint32_t kind;      // CollectiveKind
  uint64_t sequence;  // how many collectives this communicator started before
  uint64_t count;     // elements (allreduce) or round (barrier)
  uint32_t dtype;     // DataType, 0 when not applicable
  uint32_t op;        // ReduceOp, 0 when not applicable
};
static_assert(sizeof(MessageHeader) == 32, "the header is part of the wire format");

MessageHeader make_header(CollectiveKind kind, uint64_t sequence, uint64_t count, uint32_t dtype = 0, uint32_t op = 0);

// Throws IoError describing both calls when `received` (from `sender`)
// differs from `expected`.
void check_header(const MessageHeader& expected, const MessageHeader& received, const Connection& sender);

}  // namespace adaptrain::collective
