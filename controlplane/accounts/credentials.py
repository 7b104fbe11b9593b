"""Secrets the control plane hands out (API tokens, node credentials, join tokens):
generated once, shown once, stored only as SHA-256 digests.

The secrets are 256-bit random strings, so a fast digest is enough (there is nothing
to brute-force); a salted slow hash would only slow every authenticated request.
"""

import hashlib
import secrets


def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
