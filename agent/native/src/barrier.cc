// Barrier: a token sent around the ring twice, reusing the allreduce links.
//
// Round one starts at rank 0; every other rank forwards it only after it has
// itself arrived, so when the token is back at rank 0 every rank has arrived.
// A rank that saw round one still does not know that ranks after it arrived,
// hence round two: rank 0 sends a release token around, and each rank leaves
// once it has forwarded it. Rank 0 leaves when the release token returns,
// which also keeps the byte streams aligned for the next collective.
//
// Cost is 2n hops of a 32-byte message. A dissemination barrier would need
// log2(n) rounds but a connection to every rank at distance 2^k; on the ring
// links this is the cheapest choice, and barriers are rare next to allreduce.
#include "barrier.h"

#include "protocol.h"

namespace adaptrain::collective {

void ring_barrier(Transport& transport, const BarrierOptions& options) {
  const int size = transport.size();
  if (size == 1) return;
  const int rank = transport.rank();
  Connection& next = transport.connection((rank + 1) % size);
  Connection& prev = transport.connection((rank + size - 1) % size);
  Deadline deadline = Deadline::inactivity(options.timeout);

  for (uint64_t round = 0; round < 2; ++round) {
    const MessageHeader token = make_header(CollectiveKind::kBarrier, options.sequence, round);
    MessageHeader received{};
    if (rank == 0) {
      send_all(transport, next, &token, sizeof(token), deadline);
      recv_all(transport, prev, &received, sizeof(received), deadline);
    } else {
      recv_all(transport, prev, &received, sizeof(received), deadline);
      check_header(token, received, prev);
      send_all(transport, next, &token, sizeof(token), deadline);
      continue;
    }
    check_header(token, received, prev);
  }
}

}  // namespace adaptrain::collective
