// Shared memory between ranks on one host (COLLECTIVE_LOCAL_TRANSPORT).
//
// After the TCP rendezvous, each pair of ranks whose peer addresses have the
// same host part may move its data into one POSIX shared-memory segment with
// two single-producer/single-consumer rings (shm_ring.h), one per direction.
// The pair's TCP connection stays open beside it, carrying no data any more:
//
// * liveness: a rank that exits or crashes has its socket closed by the
//   kernel, so its peer's poll() wakes with end-of-stream at once; a closed
//   communicator also sets "closed" flags in the segment;
// * doorbell: a rank with nothing to do sets its ring's "waiting" flag and
//   sleeps in poll() on that socket (together with any other connections it
//   waits for, under the call's deadline, and interruptible by signals like
//   every wait); the peer, after moving bytes, sends one byte when it finds
//   the flag set. Ranks that keep each other busy never make a system call.
//
// Setting a pair up, over its TCP connection (lower rank L, higher rank H):
//   1. both send an offer: whether they want shared memory (mode not tcp and
//      identical host parts), a host identity (boot id and host name hashed:
//      equal host text on different machines is never trusted), their pid
//      and a random nonce;
//   2. if both want it and the identities match, L creates the segment
//      /adaptrain-<peer-list hash>-<cluster version>-<L>-<H>-<nonces>
//      (O_EXCL, pages reserved with posix_fallocate so a full /dev/shm is an
//      error now rather than SIGBUS later), maps it and answers created / the
//      reason it could not;
//   3. H opens and maps it, checks its header (magic, nonce, size), unlinks
//      the name at once (both sides hold a mapping, so nothing is left in
//      /dev/shm even if both crash later) and answers mapped / why not. L
//      unlinks too if H could not (and H unlinks the name if L failed).
// The nonces make every segment name new, so a stale segment of an older
// cluster version or group can never be opened by mistake. Each rank first
// sends every offer, then (as L) creates and answers, then (as H) maps and
// answers, then (as L) reads the answers: small messages that fit the
// socket buffers, in an order that cannot deadlock. With mode auto a pair
// that cannot set up shared memory stays on TCP; with mode shm it is an
// error on both ranks.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "core/deadline.h"
#include "core/tunables.h"
#include "transport/tcp/transport_tcp.h"

namespace adaptrain::collective {

struct ShmOptions {
  LocalTransport mode = LocalTransport::kAuto;
  size_t buffer_bytes = 1 << 20;  // each direction's ring, a power of two
};

// Moves the pairs it can to shared memory (see above); must run on every
// rank at the same point, after the rendezvous and before any collective.
// Returns, per rank, "self", "shm" or "tcp". Throws IoError / TimeoutError.
std::vector<std::string> use_shared_memory(TcpTransport& transport, const ShmOptions& options,
                                           Deadline& deadline);

// The host part of "host:port" as given in the peer list.
std::string host_of(const std::string& address);

// A hash of this machine's boot id and host name.
uint64_t host_identity();

}  // namespace adaptrain::collective
