"""Create or reset a user and print its API token (used by the demo and the tests)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create the user if missing, set its password, and print its API token."

    def add_arguments(self, parser):
        parser.add_argument("--username", required=True)
        parser.add_argument("--password", required=True)
        parser.add_argument("--staff", action="store_true", help="Make the user staff and superuser.")

    def handle(self, *args, username, password, staff, **options):
        if len(password) < 8:
            raise CommandError("--password must have at least 8 characters.")
        user, _ = get_user_model().objects.get_or_create(username=username)
        if staff:
            user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
