// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), self-contained.
//
// The fabric's handshakes (auth/fabric_auth.h) need a keyed MAC and nothing
// else from cryptography, so the library carries these ~150 lines instead of
// depending on OpenSSL, which node installs may lack at build time. The
// implementation follows the standard's pseudo-code directly; it is tested
// against Python's hashlib/hmac (tests/agent/native/test_fabric_auth.py) and
// the RFC 4231 vectors (agent/native/tests/test_sha256.cc).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace adaptrain::collective {

using Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t length);
  Digest finish();

 private:
  void compress(const uint8_t* block);

  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_;
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

Digest sha256(const void* data, size_t length);

// HMAC-SHA256 with a key of any length, computed incrementally: construct with
// the key, update() with the message, finish().
class HmacSha256 {
 public:
  HmacSha256(const void* key, size_t key_length);
  void update(const void* data, size_t length);
  Digest finish();

 private:
  Sha256 inner_;
  std::array<uint8_t, 64> outer_key_pad_;
};

Digest hmac_sha256(const std::string& key, const void* data, size_t length);

// Compares two digests in time independent of where they differ.
bool digests_equal(const Digest& a, const Digest& b);

}  // namespace adaptrain::collective
