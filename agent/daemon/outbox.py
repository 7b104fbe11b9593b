"""The agent's reports to the control plane (``applied``, ``failed``, ``worker``), each
delivered at least once across reconnections and agent restarts: a report is marked with
a ``ref``, kept in ``AGENT_STATE_DIR/outbox.json`` and sent on every connection of the
command channel until the control plane confirms it (``received``)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path
from typing import Protocol

from agent.daemon.storage import write_json_atomically
from agent.protocol import ProtocolError
from agent.protocol.control import AckFrame, Report, parse_from_agent, with_ref

log = logging.getLogger("agent")

MAX_UNCONFIRMED_REPORTS = 10_000


class Sender(Protocol):
    async def send(self, message: str) -> None: ...


class ReportOutbox:
    def __init__(self, path: Path, limit: int = MAX_UNCONFIRMED_REPORTS):
        self.path = path
        self.limit = limit
        self.reports: dict[str, Report] = {}  # not yet confirmed, by ref, in order
        self._added = asyncio.Event()

    def load(self) -> None:
        """Take on the reports a previous agent left unconfirmed."""
        try:
            frames = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except ValueError as exc:
            log.error("ignoring %s: %s", self.path, exc)
            return
        for data in frames if isinstance(frames, list) else []:
            try:
                report = parse_from_agent(data)
            except ProtocolError as exc:
                log.error("ignoring a report in %s: %s", self.path, exc)
                continue
            if not isinstance(report, AckFrame) and report.ref:
                self.reports[report.ref] = report
        if self.reports:
            log.info("%d report(s) from before the restart to send again", len(self.reports))

    def _save(self) -> None:
        write_json_atomically(self.path, [report.to_dict() for report in self.reports.values()])

    def put(self, report: Report) -> None:
        """Send ``report`` to the control plane at least once: it is kept until confirmed."""
        report = with_ref(report, uuid.uuid4().hex)
        assert report.ref is not None
        self.reports[report.ref] = report
        if len(self.reports) > self.limit:
            del self.reports[next(iter(self.reports))]
        self._save()
        self._added.set()

    def confirm(self, ref: str) -> None:
        """The control plane handled report ``ref``."""
        if self.reports.pop(ref, None) is not None:
            self._save()

    async def send_all(self, ws: Sender) -> None:
        """For one connection: send every unconfirmed report once, in order, then new ones
        as they come (a report stays until the control plane confirms it)."""
        sent: set[str] = set()
        while True:
            todo = [(ref, report) for ref, report in self.reports.items() if ref not in sent]
            if not todo:
                self._added.clear()
                await self._added.wait()
                continue
            for ref, report in todo:
                await ws.send(json.dumps(report.to_dict()))
                sent.add(ref)
