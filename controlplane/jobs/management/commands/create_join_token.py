"""Create a join token that agents exchange for a node credential; prints it once."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError

from controlplane.jobs.services.nodes import join_token_create


class Command(BaseCommand):
    help = "Create a join token for enrolling agents (printed once; only its digest is stored)."

    def add_arguments(self, parser):
        parser.add_argument("--label", default="", help="What the token is for.")
        parser.add_argument(
            "--ttl-hours",
            type=float,
            default=None,
            help="Expire the token after this many hours (default: never).",
        )

    def handle(self, *args, label, ttl_hours, **options):
        if ttl_hours is not None and ttl_hours <= 0:
            raise CommandError("--ttl-hours must be positive.")
        ttl = timedelta(hours=ttl_hours) if ttl_hours else None
        self.stdout.write(join_token_create(label=label, ttl=ttl))
