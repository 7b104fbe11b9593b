#include "auth/fabric_auth.h"

#include <sys/random.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/errors.h"

namespace adaptrain::collective {
namespace {

void append_u64(HmacSha256& mac, uint64_t value) {
  uint8_t bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<uint8_t>(value >> (8 * i));  // little-endian
  mac.update(bytes, sizeof(bytes));
}

}  // namespace

Nonce random_nonce16() {
  Nonce nonce{};
  size_t filled = 0;
  while (filled < nonce.size()) {
    const ssize_t got = ::getrandom(nonce.data() + filled, nonce.size() - filled, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      throw IoError("getrandom failed while making a handshake nonce: " + errno_text(errno));
    }
    filled += static_cast<size_t>(got);
  }
  return nonce;
}

Digest handshake_proof(const std::string& secret, HandshakeRole role,
                       const HandshakeContext& context) {
  HmacSha256 mac(secret.data(), secret.size());
  // Every field has a fixed length or a length prefix, so no two contexts
  // serialise to the same bytes.
  const std::string label = std::string("adaptrain-fabric/1/") + context.channel + "/" +
                            (role == HandshakeRole::kInitiator ? "initiator" : "acceptor");
  append_u64(mac, label.size());
  mac.update(label.data(), label.size());
  mac.update(context.acceptor_nonce.data(), context.acceptor_nonce.size());
  mac.update(context.initiator_nonce.data(), context.initiator_nonce.size());
  append_u64(mac, context.group_id);
  append_u64(mac, context.cluster_version);
  append_u64(mac, context.initiator_rank);
  append_u64(mac, context.acceptor_rank);
  append_u64(mac, context.world_size);
  return mac.finish();
}

std::string fabric_secret_from_environment() {
  const char* value = std::getenv("ADAPTRAIN_FABRIC_SECRET");
  return value == nullptr ? std::string() : std::string(value);
}

void log_fabric_event(const std::string& text) {
  static std::atomic<uint64_t> lines{0};
  const uint64_t n = lines.fetch_add(1);
  if (n >= 50 && n % 100 != 0) return;
  std::fprintf(stderr, "adaptrain.collective: %s%s\n", text.c_str(),
               n >= 50 ? " (further such lines are sampled)" : "");
  std::fflush(stderr);
}

}  // namespace adaptrain::collective
