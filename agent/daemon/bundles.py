"""The code of a job with a bundle, on this node: fetched once per digest, checked, kept.

A job run from a user's project names its code bundle by sha256 (``bundle`` in the start
and join payloads). Before starting the job's workers the agent makes sure the bundle is
in ``AGENT_STATE_DIR/bundles/<digest>/``: it downloads the archive with the node's own
credential (``GET /api/v1/agent/bundles/<digest>/``, served only to nodes that run a job
of that bundle), checks that its sha256 is the digest, unpacks it into a temporary
directory beside (:func:`adaptrain.bundle.unpack`: nothing may land or point outside it)
and renames that into place, so the directory is there whole or not at all. A bundle
already there is used as it is: the same digest, the same bytes. A restart, a grow or a
resumed run of the job on this node uses the same digest, so the same code.

Each job gets a working directory of its own, ``AGENT_STATE_DIR/work/job-<id>/``: the
workers start there (what they write with relative paths lands there, kept after the
job) with the bundle's directory first on ``PYTHONPATH``. The bundle's top-level files
and directories appear in the working directory as links, so a script that opens
``data/train.csv`` relative to where it runs finds it, as it did on the user's machine.

What goes wrong — a digest that is not a sha256, a download that fails, bytes that do
not match, an archive that cannot be unpacked — is a :class:`CodeUnavailable` whose
message says why; the agent fails that job's start with it and carries on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from adaptrain.bundle import BundleError, unpack
from adaptrain.rest import ApiError
from agent.protocol import vocabulary as v

log = logging.getLogger(__name__)

DIGEST = re.compile(r"[0-9a-f]{64}")
# The most a bundle may weigh, packed and unpacked; the control plane's own limit
# (BUNDLE_MAX_BYTES, 100 MiB by default) is lower.
MAX_ARCHIVE_BYTES = 1 << 30
MAX_UNPACKED_BYTES = 4 << 30

Fetch = Callable[[str], Awaitable[bytes]]


class CodeUnavailable(Exception):
    """The job's code cannot be had on this node; the message says why."""


def refusal(entrypoint: str, bundle: str | None, accepted: tuple[str, ...]) -> str | None:
    """Why this node does not run a job's code (``AGENT_CODE``), or None when it does."""
    kind = v.code_kind(entrypoint, bundle)
    if kind in accepted:
        return None
    return (
        f"this node does not run code of kind {kind!r} (its AGENT_CODE is "
        f"{','.join(accepted) or 'empty'}; the node's owner can add {kind} to it)"
    )


@dataclass(frozen=True)
class JobCode:
    """Where a job's workers start (``cwd``) and what goes first on their ``PYTHONPATH``."""

    cwd: Path
    path: Path

    def environment(self) -> dict[str, str]:
        """``PYTHONPATH`` with the bundle first, before what the agent was given."""
        inherited = os.environ.get("PYTHONPATH")
        return {"PYTHONPATH": os.pathsep.join(p for p in (str(self.path), inherited) if p)}


class BundleCache:
    """The bundles under ``AGENT_STATE_DIR/bundles/``, fetched with ``fetch`` when missing."""

    def __init__(self, state_dir: Path, fetch: Fetch):
        self.root = state_dir / "bundles"
        self.work = state_dir / "work"
        self.fetch = fetch
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, digest: str) -> Path:
        return self.root / digest

    async def ensure(self, digest: str) -> Path:
        """The directory of bundle ``digest``, fetched and unpacked first if need be."""
        if not DIGEST.fullmatch(digest):
            raise CodeUnavailable(f"{digest!r} is not a bundle digest (64 lowercase hex digits)")
        target = self.path(digest)
        # Two jobs (or a start and a grow) of one bundle fetch it once.
        async with self._locks.setdefault(digest, asyncio.Lock()):
            if target.is_dir():
                return target
            try:
                data = await self.fetch(digest)
            except ApiError as exc:
                raise CodeUnavailable(
                    f"could not download code bundle {digest[:12]}: {exc.message} "
                    f"(HTTP {exc.status})"
                ) from None
            except OSError as exc:
                raise CodeUnavailable(
                    f"could not download code bundle {digest[:12]}: {exc}"
                ) from None
            actual = hashlib.sha256(data).hexdigest()
            if actual != digest:
                raise CodeUnavailable(
                    f"code bundle digest mismatch: the job names sha256 {digest}, the "
                    f"{len(data)} bytes downloaded have sha256 {actual}; nothing was run"
                )
            await asyncio.to_thread(self._install, data, target)
            log.info("code bundle %s: unpacked into %s", digest[:12], target)
            return target

    def _install(self, data: bytes, target: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name[:12]}-", dir=self.root))
        try:
            unpack(data, staging, limit_bytes=MAX_UNPACKED_BYTES)
            staging.chmod(0o755)
            os.rename(staging, target)
        except (BundleError, OSError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if target.is_dir():  # put there meanwhile (another agent on this state dir)
                return
            what = exc if isinstance(exc, BundleError) else f"{type(exc).__name__}: {exc}"
            raise CodeUnavailable(
                f"could not unpack code bundle {target.name[:12]}: {what}"
            ) from None

    def job_directory(self, job_id: int, bundle_dir: Path) -> Path:
        """Job ``job_id``'s working directory, with links to the bundle's top-level
        entries (a file of the job's own with such a name is left alone)."""
        cwd = self.work / f"job-{job_id}"
        cwd.mkdir(parents=True, exist_ok=True)
        for entry in sorted(bundle_dir.iterdir()):
            link = cwd / entry.name
            if link.is_symlink():
                link.unlink()  # from an earlier run: point it at this bundle
            elif link.exists():
                continue
            os.symlink(entry, link)
        return cwd

    async def prepare(self, job_id: int, digest: str) -> JobCode:
        """Fetch bundle ``digest`` if need be and make job ``job_id``'s directory."""
        bundle_dir = await self.ensure(digest)
        try:
            cwd = self.job_directory(job_id, bundle_dir)
        except OSError as exc:
            raise CodeUnavailable(f"could not make the job's directory: {exc}") from None
        return JobCode(cwd=cwd, path=bundle_dir)
