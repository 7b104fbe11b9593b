// Tunables read once from COLLECTIVE_* environment variables (in the manner
// of NCCL_PARAM): they are process-wide, read on first use, and a bad value
// fails the first communicator with a message naming the variable.
#pragma once

#include <cstddef>

namespace adaptrain::collective {

struct Tunables {
  // COLLECTIVE_RING_BLOCK_BYTES: the ring's pipelining unit. Received data is
  // reduced and made available for forwarding in pieces of at most this size,
  // so the next hop starts sending before a whole chunk has arrived. Smaller
  // blocks overlap better but cost more system calls. Default 256 KiB.
  size_t ring_block_bytes;
  // COLLECTIVE_SOCKET_BUFFER_BYTES: SO_SNDBUF/SO_RCVBUF for every connection.
  // 0 leaves the kernel's autotuning on. Default 4 MiB (the kernel caps it at
  // net.core.{r,w}mem_max).
  size_t socket_buffer_bytes;
  // COLLECTIVE_CONNECT_RETRY_MS: longest pause between connection attempts to
  // a peer that is not listening yet. Default 200 ms.
  int connect_retry_ms;
};

// Throws InvalidArgumentError naming the variable when a value does not parse.
const Tunables& tunables();

}  // namespace adaptrain::collective
