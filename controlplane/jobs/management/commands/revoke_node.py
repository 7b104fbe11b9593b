"""Revoke an enrolled node by name: its credential is refused from now on and its name may
be enrolled again with a join token (an admin's explicit replace of a node)."""

from __future__ import annotations

import getpass

from django.core.management.base import BaseCommand, CommandError

from controlplane.jobs.models import Node
from controlplane.jobs.services.nodes import node_revoke


class Command(BaseCommand):
    help = (
        "Revoke the enrolled node NAME (as the nodes page and POST /api/v1/nodes/{id}/revoke/ "
        "do): its agent stops, its jobs go on without it, and the name can be enrolled "
        "again with a join token. Logged with who did it."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="The node's name (AGENT_NAME).")

    def handle(self, *args, name, **options):
        node = Node.objects.enrolled().filter(name=name).first()
        if node is None:
            raise CommandError(f"No enrolled node is named {name!r} (see the nodes page).")
        if node.status == Node.Status.REVOKED:
            self.stdout.write(f"node {name} was revoked already: {node.status_reason}")
            return
        node = node_revoke(node_id=node.id, actor=f"manage.py ({getpass.getuser()})")
        self.stdout.write(f"node {name} revoked; enrol the replacement with a new join token")
