"""Create a join token that agents exchange for a node credential; prints it once."""

from __future__ import annotations

import re
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from controlplane.jobs.services.nodes import (
    JOIN_TOKEN_DEFAULT_EXPIRY,
    JOIN_TOKEN_DEFAULT_USES,
    join_token_create,
)

UNITS = {"m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> timedelta:
    """``30m``, ``24h``, ``7d`` (a bare number: hours)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([mhd]?)\s*", text)
    if match is None or float(match[1]) <= 0:
        raise CommandError(
            f"--expires-in {text!r}: give a positive duration such as 30m, 24h or 7d."
        )
    return timedelta(seconds=float(match[1]) * UNITS[match[2] or "h"])


class Command(BaseCommand):
    help = (
        "Create a join token for enrolling agents: printed once (only its digest is stored), "
        "good for --uses enrolments until it expires."
    )

    def add_arguments(self, parser):
        parser.add_argument("--label", default="", help="What the token is for.")
        parser.add_argument(
            "--uses",
            type=int,
            default=JOIN_TOKEN_DEFAULT_USES,
            help=f"How many nodes may enrol with it (default {JOIN_TOKEN_DEFAULT_USES}).",
        )
        parser.add_argument(
            "--expires-in",
            default=f"{JOIN_TOKEN_DEFAULT_EXPIRY.total_seconds() / 3600:g}h",
            help="How long it is good for: 30m, 24h, 7d (default %(default)s).",
        )

    def handle(self, *args, label, uses, expires_in, **options):
        if not 1 <= uses <= 1000:
            raise CommandError(f"--uses {uses}: give a number of enrolments from 1 to 1000.")
        _, secret = join_token_create(label=label, uses=uses, expires_in=duration(expires_in))
        self.stdout.write(secret)
