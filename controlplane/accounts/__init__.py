"""Accounts: users' API tokens and the secrets the control plane hands out.

Tokens are created (the secret shown once) and revoked here, and authenticate API
requests (``Authorization: Token <secret>``). The credential helpers (``new_secret``,
``digest``) also make the jobs app's node credentials and join tokens; those stay with
the nodes they are for. The lowest app: it imports no other app of the control plane.
"""
