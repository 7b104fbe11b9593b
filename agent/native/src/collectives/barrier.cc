// Barrier: a token sent around the ring twice, reusing the ring's links.
//
// Round one starts at rank 0; every other rank forwards it only after it has
// itself arrived, so when the token is back at rank 0 every rank has arrived.
// A rank that saw round one still does not know that ranks after it arrived,
// hence round two: rank 0 sends a release token around, and each rank leaves
// once it has forwarded it. Rank 0 leaves when the release token returns,
// which also keeps the byte streams aligned for the next collective.
//
// Cost is 2n hops of a 48-byte header. A dissemination barrier would need
// log2(n) rounds; barriers are rare next to allreduce, and the token ring
// doubles as a check that every rank is in the same barrier.
#include "collectives/barrier.h"

#include "collectives/protocol.h"

namespace adaptrain::collective {

void ring_barrier(Transport& transport, const BarrierOptions& options) {
  const int size = transport.size();
  if (size == 1) return;
  const int rank = transport.rank();
  Connection& next = transport.connection((rank + 1) % size);
  Connection& prev = transport.connection((rank + size - 1) % size);
  Deadline deadline = Deadline::inactivity(options.timeout);

  for (uint64_t round = 0; round < 2; ++round) {
    MessageHeader token;
    token.kind = static_cast<uint32_t>(CollectiveKind::kBarrier);
    token.sequence = options.sequence;
    token.count = round;
    const HeaderBytes out = encode_header(token);
    HeaderBytes in{};
    if (rank == 0) {
      send_all(transport, next, out.data(), out.size(), deadline, options.spin_us);
      recv_all(transport, prev, in.data(), in.size(), deadline, options.spin_us);
      check_header(token, in.data(), prev);
    } else {
      recv_all(transport, prev, in.data(), in.size(), deadline, options.spin_us);
      check_header(token, in.data(), prev);
      send_all(transport, next, out.data(), out.size(), deadline, options.spin_us);
    }
  }
}

}  // namespace adaptrain::collective
