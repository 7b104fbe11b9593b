"""The native library's own HMAC-SHA256 (src/auth/sha256.cc, used by the fabric's
handshake) agrees with Python's hmac/hashlib for keys and messages of every length
around the block size, including keys longer than a block (hashed first)."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from agent.native import _collective

LENGTHS = [0, 1, 31, 32, 55, 56, 63, 64, 65, 119, 120, 127, 128, 129, 200, 1000]


@pytest.mark.parametrize("key_length", LENGTHS)
def test_hmac_sha256_matches_pythons_for_every_key_and_message_length(key_length: int) -> None:
    rng = random.Random(key_length)
    key = rng.randbytes(key_length)
    for message_length in LENGTHS:
        message = rng.randbytes(message_length)
        expected = hmac.new(key, message, hashlib.sha256).digest()
        assert _collective._hmac_sha256(key, message) == expected, (key_length, message_length)


def test_a_secret_given_as_text_is_keyed_by_its_bytes() -> None:
    secret = "a1" * 32  # as the control plane hands it out
    assert (
        _collective._hmac_sha256(secret.encode(), b"context")
        == hmac.new(secret.encode(), b"context", hashlib.sha256).digest()
    )
