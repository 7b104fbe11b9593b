"""The commands forwarded to a job's workers on this node: which worker still owes which
reply, which lines to send again to a worker that reconnects, and the node's one report
per command (``applied`` at the step every worker applied it at, or ``failed`` saying
why) once every worker that owes a reply has given one (or is gone); and the commands the
agent carries out itself (start, grows, terminate), noted until they are done.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.protocol import vocabulary as v
from agent.protocol.control import AppliedFrame, CommandFrame, FailedFrame
from agent.protocol.worker import AppliedLine, CommandLine, FailedLine

MAX_KEPT_COMMANDS = 1000  # forwarded commands kept to send again to workers that reconnect

OnCommandDone = Callable[[AppliedFrame | FailedFrame], Awaitable[None]]


def ends_joiners(command: CommandFrame) -> bool:
    """A ``stop`` that ends only the standbys it lists (the control plane gave up a grow)."""
    return command.action == v.STOP and command.stop_payload().joiners is not None


def terminates(command: CommandFrame) -> bool:
    """A ``stop`` that kills the job's workers (the job failed; no step to agree on)."""
    return command.action == v.STOP and command.stop_payload().terminate


@dataclass
class PendingCommand:
    id: int
    seq: int
    action: str
    expected: set[int] = field(default_factory=set)  # workers that must reply
    steps: dict[int, int] = field(default_factory=dict)  # worker -> step applied at
    lrs: dict[int, float] = field(default_factory=dict)  # worker -> learning rate after applying
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def answered(self) -> bool:
        """Whether every worker that owes a reply gave one."""
        return self.expected.issubset(set(self.steps) | set(self.errors))

    def report(self) -> AppliedFrame | FailedFrame:
        """The node's report once :attr:`answered`."""
        steps = set(self.steps.values())
        if self.errors:
            return FailedFrame(
                id=self.id,
                error="; ".join(f"worker {r}: {e}" for r, e in sorted(self.errors.items())),
            )
        if len(steps) > 1:
            return FailedFrame(
                id=self.id, error=f"workers applied at different steps {sorted(steps)}"
            )
        if not steps:
            return FailedFrame(
                id=self.id, error="this node's workers of the job left before applying it"
            )
        lrs = set(self.lrs.values())
        return AppliedFrame(id=self.id, step=steps.pop(), lr=lrs.pop() if len(lrs) == 1 else None)

    def state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "seq": self.seq,
            "action": self.action,
            "expected": sorted(self.expected),
            "steps": self.steps,
            "lrs": self.lrs,
            "errors": self.errors,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> PendingCommand:
        return cls(
            int(d["id"]),
            int(d["seq"]),
            d["action"],
            expected={int(r) for r in d["expected"]},
            steps={int(r): int(v) for r, v in d["steps"].items()},
            lrs={int(r): float(v) for r, v in d["lrs"].items()},
            errors={int(r): str(v) for r, v in d["errors"].items()},
        )


class CommandRelay:
    """The commands of one job on this node (``save`` writes the job's state: a report is
    in the agent's outbox before its command leaves the state)."""

    def __init__(self, on_done: OnCommandDone, save: Callable[[], None]):
        self.on_done = on_done
        self.save = save
        self.pending: dict[int, PendingCommand] = {}  # waiting for replies, by id
        self.lines: list[CommandLine] = []  # forwarded, to send again on reconnect
        self.seen: set[int] = set()  # ids of commands taken

    def keep(self, command: CommandFrame, expected: set[int] | None) -> None:
        """Keep the command's line to send again; with ``expected``, wait for the replies
        of those workers."""
        self.lines.append(command.for_worker())
        del self.lines[:-MAX_KEPT_COMMANDS]
        if expected is not None:
            self.pending[command.id] = PendingCommand(
                command.id, command.seq, command.action, expected=expected
            )

    def missed(self, replied_seq: int) -> list[CommandLine]:
        """What a worker that answered up to ``replied_seq`` is sent on reconnecting."""
        return [c for c in self.lines if c.seq > replied_seq]

    def trim(self, answered_seq: int) -> None:
        """Forget the lines every member answered (and no pending command needs)."""
        self.lines = [c for c in self.lines if c.seq > answered_seq or c.id in self.pending]

    async def reply(self, rank: int, line: AppliedLine | FailedLine) -> None:
        """Worker ``rank`` answered a command."""
        command = self.pending.get(line.id)
        if command is None or rank not in command.expected:
            return  # not ours to count (e.g. the inert scale_workers line, or answered again)
        if isinstance(line, AppliedLine):
            command.steps[rank] = line.step
            if line.lr is not None:
                command.lrs[rank] = float(line.lr)
        else:
            command.errors[rank] = line.error
        if not await self.settle(command):
            self.save()

    async def settle(self, command: PendingCommand) -> bool:
        """Report the command once every expected worker answered; True when it was."""
        if command.id not in self.pending or not command.answered:
            return False
        del self.pending[command.id]
        await self.on_done(command.report())
        self.save()
        return True

    async def worker_gone(self, rank: int) -> None:
        """Worker ``rank`` exited: it owes no reply any more."""
        for command in list(self.pending.values()):
            command.expected.discard(rank)
            await self.settle(command)

    async def members_changed(self, members: set[int]) -> None:
        """A new cluster version: workers no longer ``members`` owe no reply."""
        for command in list(self.pending.values()):
            command.expected &= members | set(command.steps) | set(command.errors)
            await self.settle(command)

    async def resume(self, alive: set[int]) -> None:
        """After an agent restart: only the workers still ``alive`` owe a reply."""
        for command in list(self.pending.values()):
            command.expected = (command.expected & alive) | set(command.steps) | set(command.errors)
            await self.settle(command)

    def state(self) -> dict[str, Any]:
        return {
            "pending": [c.state() for c in self.pending.values()],
            "commands": [c.to_dict() for c in self.lines],
            "seen": sorted(self.seen),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.pending = {int(c["id"]): PendingCommand.from_state(c) for c in state["pending"]}
        self.lines = [CommandLine.from_dict(c) for c in state["commands"]]
        self.seen = {int(i) for i in state["seen"]}


@dataclass
class JobNotes:
    """The commands of a job the agent carries out itself, noted in the job's state so
    that a restarted agent finishes them."""

    start: CommandFrame | None = None  # the start command being carried out here
    started: bool = False  # its workers started, and that was reported
    joins: list[CommandFrame] = field(default_factory=list)  # grows whose joiners are starting
    terminate: int | None = None  # a terminating stop taken on, to carry out

    def state(self) -> dict[str, Any]:
        return {
            "start": None if self.start is None else self.start.to_dict(),
            "started": self.started,
            "joins": [frame.to_dict() for frame in self.joins],
            "terminate": self.terminate,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> JobNotes:
        start = d.get("start")
        return cls(
            start=None if start is None else CommandFrame.from_dict(start),
            started=bool(d.get("started")),
            joins=[CommandFrame.from_dict(frame) for frame in d.get("joins") or []],
            terminate=d.get("terminate"),
        )
