"""Create or reset a user and print its API token (used by the demo and the tests). The
user may submit code bundles (the ``bundles.submit_bundle`` permission): the demo and the
tests run their own code."""

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management.base import BaseCommand, CommandError

from controlplane.accounts.services import token_create, tokens_revoke_named


class Command(BaseCommand):
    help = "Create the user if missing, set its password, and print a new API token."

    def add_arguments(self, parser):
        parser.add_argument("--username", required=True)
        parser.add_argument("--password", required=True)
        parser.add_argument(
            "--staff", action="store_true", help="Make the user staff and superuser."
        )
        parser.add_argument(
            "--token-name",
            default="ensure_user",
            help="Name of the API token to (re)create (default: ensure_user).",
        )

    def handle(self, *args, username, password, staff, **options):
        if len(password) < 8:
            raise CommandError("--password must have at least 8 characters.")
        user, _ = get_user_model().objects.get_or_create(username=username)
        if staff:
            user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label="bundles", codename="submit_bundle")
        )
        # A fresh token per run; earlier ones made by this command stop working.
        tokens_revoke_named(user=user, name=options["token_name"])
        _, secret = token_create(user=user, name=options["token_name"])
        self.stdout.write(secret)
