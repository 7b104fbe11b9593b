// The header that opens every collective on every link.
//
// Ranks must call the same collectives, in the same order, with the same
// element count, shape, type, op, root and algorithm. Nothing in a byte
// stream enforces that, and a mismatch would otherwise show up as silently
// wrong numbers or a hang. So each collective first sends a 48-byte header
// describing the call; the receiver compares it with its own call and fails
// loudly on a difference. It rides in front of the payload (no extra round
// trip), so it costs one small copy per collective.
//
// Wire format (little-endian, 48 bytes):
//   0 magic u32 "COLM" | 4 kind u32 | 8 sequence u64 | 16 count u64 |
//   24 shape_hash u64 | 32 dtype u32 | 36 op u32 | 40 algorithm u32 | 44 root u32
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "transport/transport.h"

namespace adaptrain::collective {

enum class CollectiveKind : uint32_t {
  kAllreduce = 1,
  kBarrier = 2,
  kBroadcast = 3,
  kAllgather = 4,
  kReduceScatter = 5,
  kConsensus = 6,
};

const char* name_of(CollectiveKind kind);

struct MessageHeader {
  uint32_t kind = 0;        // CollectiveKind
  uint64_t sequence = 0;    // how many collectives this communicator started before
  uint64_t count = 0;       // elements (or round, for the barrier)
  uint64_t shape_hash = 0;  // hash_shape() of the caller's array shape, 0 when not applicable
  uint32_t dtype = 0;       // DataType, 0 when not applicable
  uint32_t op = 0;          // ReduceOp, 0 when not applicable
  uint32_t algorithm = 0;   // Algorithm that runs it, 0 when not applicable
  uint32_t root = 0;        // broadcast root
};

constexpr size_t kHeaderBytes = 48;
using HeaderBytes = std::array<uint8_t, kHeaderBytes>;

HeaderBytes encode_header(const MessageHeader& header);
// False when the bytes do not start with the header magic.
bool decode_header(const uint8_t* bytes, MessageHeader* header);

// FNV-1a over the dimensions, so that a (2, 3) array does not silently
// combine with a (3, 2) one.
uint64_t hash_shape(const std::vector<size_t>& shape);

// "allreduce #3 of 10 float32 (sum, ring)" for messages.
std::string describe(const MessageHeader& header);

// Throws IoError describing both calls when `received` (from `sender`)
// differs from `expected`, or is not a header at all.
void check_header(const MessageHeader& expected, const uint8_t* received, const Connection& sender);

// Watches the links a collective does not use. Ranks that disagree about the
// algorithm, the root or the collective itself use different links, so each
// may wait for data that the other sent somewhere else; without this they
// would only fail at the timeout. A header that arrives on an unused link and
// belongs to this very call (same sequence number) is such a disagreement
// and fails at once, naming both calls. A header of a later call is a peer
// that is simply ahead (it finished this call and started the next), and
// that link is left alone from then on; so is a link whose peer closed it
// (that peer may have finished its last call).
class StrayHeaderWatch {
 public:
  // `used`: the ranks this collective exchanges data with.
  StrayHeaderWatch(Transport& transport, const MessageHeader& expected,
                   const std::vector<int>& used);

  // Appends a receive request per watched link.
  void add_requests(std::vector<WaitRequest>& requests) const;
  // After a wait: throws IoError if a watched link carries this call's header.
  void check();

 private:
  const MessageHeader& expected_;
  std::vector<Connection*> watched_;
};

}  // namespace adaptrain::collective
