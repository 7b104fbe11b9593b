// Proof of membership for every connection between the workers of one run.
//
// The control plane gives each run's workers a secret (ADAPTRAIN_FABRIC_SECRET,
// delivered by their agent; docs/security.md). Every connection of the fabric
// (collective links, and through them the shared-memory set-up; peer-blob
// connections) starts with a challenge-response over it:
//
//   acceptor -> initiator: challenge (its fresh random nonce A, and who it is)
//   initiator -> acceptor: its nonce I and HMAC(secret, "initiator" | context)
//   acceptor -> initiator: HMAC(secret, "acceptor" | context) if it accepts
//
// where the context is the channel ("collective" or "blob"), A, I, the peer
// list hash, the cluster version, both ranks and the group size. The secret
// never crosses the wire; a recorded handshake replayed later fails because the
// acceptor's nonce is new every time (and the initiator's, for the answer);
// a process of another job or run holds another secret, and one of another
// cluster version or group computes another context. Both sides prove
// themselves, so a worker neither admits a stranger nor takes gradients or
// weights from one that sits at a stale address.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "auth/sha256.h"

namespace adaptrain::collective {

constexpr size_t kNonceBytes = 16;
using Nonce = std::array<uint8_t, kNonceBytes>;

// From the kernel's random source (getrandom); throws IoError if it fails.
Nonce random_nonce16();

enum class HandshakeRole { kInitiator, kAcceptor };

struct HandshakeContext {
  const char* channel = "collective";  // "collective" or "blob"
  Nonce acceptor_nonce{};
  Nonce initiator_nonce{};
  uint64_t group_id = 0;
  uint64_t cluster_version = 0;
  uint32_t initiator_rank = 0;
  uint32_t acceptor_rank = 0;
  uint32_t world_size = 0;
};

// The MAC that `role` sends for `context`, keyed by the run's secret.
Digest handshake_proof(const std::string& secret, HandshakeRole role,
                       const HandshakeContext& context);

// The secret to use when a communicator was given none: the environment
// variable ADAPTRAIN_FABRIC_SECRET, or empty (no authentication beyond the
// handshake's other checks; docs/security.md).
std::string fabric_secret_from_environment();

// One line on stderr ("adaptrain.collective: ..."): refused and dropped
// connections are worth an operator's attention (they name the address), but a
// flood of them must not flood the log, so after 50 lines only every 100th is
// written.
void log_fabric_event(const std::string& text);

}  // namespace adaptrain::collective
