"""Code bundles: a project directory packed into one reproducible archive, named by its
sha256 digest (standard library only).

``adaptrain run ./my_project …`` packs the directory before submitting a job; the control
plane stores the archive under its digest and the agents that run the job fetch it,
check the digest and unpack it into a directory of the job's (:func:`unpack`). What is
packed:

- every regular file under the directory, except what ``.gitignore`` and
  ``.adaptrainignore`` files exclude (git's rules: patterns relative to the file's
  directory, ``/`` anchoring, ``**``, ``!`` re-including, a trailing ``/`` for directories;
  ``.adaptrainignore`` is read after ``.gitignore`` in each directory, so it can re-include
  what git ignores), and except :data:`ALWAYS_IGNORED` (``.git/``, caches, virtualenvs);
- symbolic links pointing inside the directory, as links; any other link is refused, as
  is a file that is not regular (a socket, a device).

The archive is a gzip'd tar whose bytes depend only on the files' paths, contents and
executable bits (sorted entries, zero times and owners), so the same project gives the
same digest on every machine and a resubmission stores nothing new. A project larger
than the limit (100 MiB unpacked by default) is refused with its biggest files named.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_LIMIT_BYTES = 100 * 1024 * 1024
IGNORE_FILES = (".gitignore", ".adaptrainignore")
ALWAYS_IGNORED = (
    ".git/",
    ".hg/",
    ".svn/",
    "__pycache__/",
    "*.pyc",
    ".venv/",
    "venv/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".ipynb_checkpoints/",
    ".DS_Store",
)
MAX_UNPACKED_FILES = 100_000


class BundleError(ValueError):
    """A project that cannot be packed, or an archive that must not be unpacked."""


# --- ignore rules (git's semantics) ------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    base: str  # directory of the ignore file, relative to the root ("" for the root)
    regex: re.Pattern[str]
    negate: bool
    directory_only: bool


def _translate(glob: str) -> str:
    """A gitignore glob (no leading/trailing slash handling) as a regex over a path."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("/.*")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = glob.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = glob[i + 1 : end]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                i = end + 1
        elif c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def parse_ignore(text: str, base: str = "") -> list[_Rule]:
    """The rules of one ignore file whose directory is ``base`` (relative, POSIX)."""
    rules = []
    for raw in text.splitlines():
        line = raw.rstrip("\n\r")
        if not line.strip() or line.startswith("#"):
            continue
        # Trailing spaces are ignored unless escaped.
        stripped = line.rstrip(" ")
        if stripped.endswith("\\") and len(line) > len(stripped):
            stripped += " "
        line = stripped
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        elif line.startswith("\\!") or line.startswith("\\#"):
            line = line[1:]
        directory_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        anchored = "/" in line
        line = line.lstrip("/")
        pattern = _translate(line)
        regex = pattern if anchored else f"(?:.*/)?{pattern}"
        rules.append(
            _Rule(base, re.compile(f"{regex}(?:/.*)?\\Z", re.DOTALL), negate, directory_only)
        )
    return rules


def _ignored(rules: list[_Rule], path: str, is_dir: bool) -> bool:
    """Whether ``path`` (relative to the root) is excluded: the last matching rule wins."""
    verdict = False
    for rule in rules:
        if rule.base:
            if not path.startswith(rule.base + "/"):
                continue
            relative = path[len(rule.base) + 1 :]
        else:
            relative = path
        # "build/" matches only a directory; what is inside an excluded directory is never
        # looked at (the walk prunes it), and, as in git, cannot be re-included.
        if (rule.directory_only and not is_dir) or not rule.regex.match(relative):
            continue
        verdict = not rule.negate
    return verdict


# --- packing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A packed project: the archive's bytes, its digest and what went in."""

    data: bytes
    digest: str  # hex sha256 of data
    files: tuple[str, ...]
    unpacked_bytes: int

    @property
    def size(self) -> int:
        return len(self.data)


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """Every path under ``root`` that the ignore rules keep, files and links, sorted."""
    rules = parse_ignore("\n".join(ALWAYS_IGNORED))

    def visit(directory: Path, relative: str) -> Iterator[tuple[str, Path]]:
        for name in IGNORE_FILES:
            ignore_file = directory / name
            if ignore_file.is_file():
                rules.extend(parse_ignore(ignore_file.read_text(errors="replace"), relative))
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            raise BundleError(f"cannot read {directory}: {exc.strerror}") from None
        for entry in entries:
            path = f"{relative}/{entry.name}" if relative else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            if _ignored(rules, path, is_dir):
                continue
            if is_dir:
                yield from visit(Path(entry.path), path)
            else:
                yield path, Path(entry.path)

    yield from visit(root, "")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def pack(directory: str | os.PathLike[str], *, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> Bundle:
    """Pack ``directory`` (see the module docstring); :class:`BundleError` says what to fix."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise BundleError(f"{directory} is not a directory")
    members: list[tuple[str, Path, os.stat_result]] = []
    total = 0
    for relative, path in _walk(root):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            target = os.readlink(path)
            resolved = (path.parent / target).resolve()
            if os.path.isabs(target) or not resolved.is_relative_to(root):
                raise BundleError(
                    f"{relative} is a symbolic link to {target}, outside the project; "
                    "copy the file in, or list the link in .adaptrainignore"
                )
        elif not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{relative} is not a regular file; list it in .adaptrainignore")
        else:
            total += info.st_size
        members.append((relative, path, info))
    if not members:
        raise BundleError(f"{directory} has no files to pack (all ignored?)")
    if total > limit_bytes:
        biggest = sorted(
            (m for m in members if stat.S_ISREG(m[2].st_mode)), key=lambda m: -m[2].st_size
        )[:5]
        listing = ", ".join(f"{m[0]} ({_human(m[2].st_size)})" for m in biggest)
        raise BundleError(
            f"{directory} is {_human(total)}, over the {_human(limit_bytes)} limit for code "
            f"bundles; biggest files: {listing}. Keep data sets and checkpoints out of the "
            "project (list them in .adaptrainignore) and read them from storage the nodes share"
        )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for relative, path, info in members:
            item = tarfile.TarInfo(relative)
            item.mtime = 0
            item.uid = item.gid = 0
            item.uname = item.gname = ""
            if stat.S_ISLNK(info.st_mode):
                item.type = tarfile.SYMTYPE
                item.linkname = os.readlink(path)
                item.mode = 0o777
                tar.addfile(item)
            else:
                item.size = info.st_size
                item.mode = 0o755 if info.st_mode & stat.S_IXUSR else 0o644
                with open(path, "rb") as f:
                    tar.addfile(item, f)
    data = gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)
    return Bundle(
        data=data,
        digest=hashlib.sha256(data).hexdigest(),
        files=tuple(m[0] for m in members),
        unpacked_bytes=total,
    )


# --- unpacking (on the nodes) ------------------------------------------------------------


def check_digest(data: bytes, digest: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise BundleError(f"bundle digest mismatch: expected sha256 {digest}, got {actual}")


@dataclass(frozen=True)
class Contents:
    """What a checked archive holds."""

    files: tuple[str, ...]
    unpacked_bytes: int


def _checked(data: bytes, limit_bytes: int) -> tuple[tarfile.TarFile, list[tarfile.TarInfo]]:
    """The archive's members, after refusing anything unsafe to unpack (see :func:`unpack`)."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"not a valid bundle (gzip'd tar): {exc}") from None
    if len(members) > MAX_UNPACKED_FILES:
        raise BundleError(f"bundle has {len(members)} entries, over {MAX_UNPACKED_FILES}")
    total = 0
    links = {PurePosixPath(m.name) for m in members if m.issym()}
    seen: set[PurePosixPath] = set()
    for member in members:
        name = PurePosixPath(member.name)
        if member.isdir() and str(name) == ".":
            continue  # the root itself, as `tar czf x.tar.gz -C project .` writes it
        if name.is_absolute() or ".." in name.parts or not name.parts:
            raise BundleError(
                f"bundle entry {member.name!r} would land outside the job's directory"
            )
        # An entry under a link would be written wherever the link points.
        through = next((p for p in name.parents if p in links), None)
        if through is not None:
            raise BundleError(
                f"bundle entry {member.name!r} lies under {str(through)!r}, a symbolic link"
            )
        if name in seen and not member.isdir():
            raise BundleError(f"bundle entry {member.name!r} appears twice")
        seen.add(name)
        if member.issym():
            link = PurePosixPath(member.linkname)
            joined = PurePosixPath(*name.parts[:-1], *link.parts)
            depth = 0
            for part in joined.parts:
                depth += -1 if part == ".." else 1
                if depth < 0:
                    break
            if link.is_absolute() or depth < 0:
                raise BundleError(
                    f"bundle entry {member.name!r} links to {member.linkname!r}, outside the "
                    "job's directory"
                )
        elif not (member.isfile() or member.isdir()):
            raise BundleError(f"bundle entry {member.name!r} is not a file, directory or link")
        total += member.size
    if total > limit_bytes:
        raise BundleError(
            f"bundle unpacks to {_human(total)}, over the {_human(limit_bytes)} limit"
        )
    return tar, members


def inspect(data: bytes, *, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> Contents:
    """Check an archive as :func:`unpack` would, without writing anything."""
    _, members = _checked(data, limit_bytes)
    return Contents(
        files=tuple(m.name for m in members if m.isfile()),
        unpacked_bytes=sum(m.size for m in members),
    )


def unpack(
    data: bytes, destination: str | os.PathLike[str], *, limit_bytes: int = DEFAULT_LIMIT_BYTES
) -> list[str]:
    """Unpack an archive made by :func:`pack` into ``destination`` (created; must not exist
    or be empty). Refuses, before writing anything, members that would land outside it
    (absolute paths, ``..``, links out, entries under a link, the same name twice), special
    files, and more than ``limit_bytes`` or :data:`MAX_UNPACKED_FILES` in all: a bundle is
    untrusted input to the node. Links are made last, so nothing is written through one,
    then each is resolved: one that leads out through another is refused after the fact
    (the caller unpacks into a fresh directory and removes it on an error)."""
    tar, members = _checked(data, limit_bytes)
    target = Path(destination)
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    # Files and directories first, links last: nothing is ever written through a link.
    for member in sorted(members, key=lambda m: m.issym()):
        path = target / member.name
        if member.isdir():
            path.mkdir(parents=True, exist_ok=True)
        elif member.issym():
            path.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(member.linkname, path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            with open(path, "wb") as f:
                while chunk := source.read(1 << 20):
                    f.write(chunk)
            os.chmod(path, 0o755 if member.mode & 0o100 else 0o644)
    # Each link was checked on its own above; a chain of links (one through another) could
    # still lead out, which only the file system can tell once all are there.
    for member in members:
        if member.issym() and not (target / member.name).resolve().is_relative_to(root):
            raise BundleError(
                f"bundle entry {member.name!r} links to {member.linkname!r}, which leads "
                "outside the job's directory (through another link)"
            )
    return [m.name for m in members if m.isfile()]
