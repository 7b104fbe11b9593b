// SHA-256 and HMAC-SHA256 (auth/sha256.h) against FIPS 180-4 and RFC 4231
// vectors, and the handshake proof's sensitivity to every field.
#include <string>

#include "auth/fabric_auth.h"
#include "auth/sha256.h"
#include "unit_tests.h"

using namespace adaptrain::collective;

namespace {

std::string hex(const Digest& digest) {
  static const char* digits = "0123456789abcdef";
  std::string text;
  for (uint8_t byte : digest) {
    text += digits[byte >> 4];
    text += digits[byte & 15];
  }
  return text;
}

std::string sha256_hex(const std::string& text) { return hex(sha256(text.data(), text.size())); }

}  // namespace

TEST(sha256_matches_the_standards_vectors) {
  CHECK_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK_EQ(sha256_hex(std::string(1000, 'a')),
           "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}

TEST(sha256_is_the_same_fed_in_pieces) {
  const std::string text(777, 'x');
  Sha256 pieces;
  for (size_t i = 0; i < text.size(); i += 13)
    pieces.update(text.data() + i, std::min<size_t>(13, text.size() - i));
  CHECK_EQ(hex(pieces.finish()), sha256_hex(text));
}

TEST(hmac_sha256_matches_rfc_4231) {
  const std::string data = "Hi There";
  CHECK_EQ(hex(hmac_sha256(std::string(20, '\x0b'), data.data(), data.size())),
           "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  // A key longer than the block is hashed first (test case 6).
  const std::string long_key(131, '\xaa');
  const std::string message = "Test Using Larger Than Block-Size Key - Hash Key First";
  CHECK_EQ(hex(hmac_sha256(long_key, message.data(), message.size())),
           "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST(handshake_proof_depends_on_every_field_and_the_role) {
  HandshakeContext base;
  base.acceptor_nonce[0] = 1;
  base.initiator_nonce[0] = 2;
  base.group_id = 3;
  base.cluster_version = 4;
  base.initiator_rank = 0;
  base.acceptor_rank = 1;
  base.world_size = 2;
  const Digest reference = handshake_proof("secret", HandshakeRole::kInitiator, base);
  CHECK(digests_equal(reference, handshake_proof("secret", HandshakeRole::kInitiator, base)));
  CHECK(!digests_equal(reference, handshake_proof("secret", HandshakeRole::kAcceptor, base)));
  CHECK(!digests_equal(reference, handshake_proof("other", HandshakeRole::kInitiator, base)));
  auto differs = [&](HandshakeContext changed) {
    return !digests_equal(reference, handshake_proof("secret", HandshakeRole::kInitiator, changed));
  };
  HandshakeContext c = base;
  c.acceptor_nonce[15] ^= 1;
  CHECK(differs(c));
  c = base;
  c.initiator_nonce[7] ^= 1;
  CHECK(differs(c));
  c = base;
  c.group_id = 5;
  CHECK(differs(c));
  c = base;
  c.cluster_version = 5;
  CHECK(differs(c));
  c = base;
  c.initiator_rank = 1;
  c.acceptor_rank = 0;
  CHECK(differs(c));
  c = base;
  c.world_size = 3;
  CHECK(differs(c));
  c = base;
  c.channel = "blob";
  CHECK(differs(c));
}

TEST(nonces_are_not_repeated) {
  const Nonce a = random_nonce16();
  const Nonce b = random_nonce16();
  CHECK(a != b);
}
