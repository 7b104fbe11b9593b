"""The node's cache of code bundles (agent.daemon.bundles): a bundle is fetched once per
digest, checked against it, unpacked whole or not at all, and each job gets a directory
of its own; what goes wrong is a CodeUnavailable saying why, and nothing half-made stays.

The control plane's side of the download is played by ``fetch`` here (the real one, over
HTTP with the node credential, runs in tests/e2e/test_own_code.py)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import tarfile

import pytest

from adaptrain.bundle import pack
from adaptrain.rest import ApiError
from agent.daemon.bundles import BundleCache, CodeUnavailable, refusal


def project(tmp_path, files: dict[str, str]):
    root = tmp_path / "project"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return pack(root)


class Server:
    """What the control plane serves: archives by digest, counting downloads."""

    def __init__(self, archives: dict[str, bytes]):
        self.archives = archives
        self.downloads = 0

    async def fetch(self, digest: str) -> bytes:
        self.downloads += 1
        await asyncio.sleep(0.01)  # a download takes a while: others wait for it
        if digest not in self.archives:
            raise ApiError(404, f"No unfinished job on this node runs bundle {digest}.")
        return self.archives[digest]


def leftovers(cache: BundleCache) -> list[str]:
    return sorted(p.name for p in cache.root.iterdir()) if cache.root.exists() else []


def test_a_bundle_is_fetched_once_and_each_job_gets_its_own_directory(tmp_path):
    bundle = project(tmp_path, {"train.py": "X = 1\n", "data/config.json": "{}"})
    server = Server({bundle.digest: bundle.data})
    cache = BundleCache(tmp_path / "state", server.fetch)

    async def run():
        # A start and a grow of one bundle at the same time: one download.
        first, second = await asyncio.gather(
            cache.prepare(1, bundle.digest), cache.prepare(2, bundle.digest)
        )
        again = await cache.prepare(1, bundle.digest)  # a restart of job 1
        return first, second, again

    first, second, again = asyncio.run(run())
    assert server.downloads == 1
    assert first.path == second.path == again.path == cache.path(bundle.digest)
    assert (first.path / "train.py").read_text() == "X = 1\n"
    assert first.cwd != second.cwd and first.cwd == again.cwd
    # Relative paths work in the job's directory as in the project; what the job writes
    # stays in its own directory.
    assert (first.cwd / "data" / "config.json").read_text() == "{}"
    (first.cwd / "out.txt").write_text("result")
    assert not (first.path / "out.txt").exists() and not (second.cwd / "out.txt").exists()
    assert first.environment()["PYTHONPATH"].split(":")[0] == str(first.path)
    assert leftovers(cache) == [bundle.digest]


def test_bytes_that_do_not_match_the_digest_are_never_unpacked(tmp_path):
    bundle = project(tmp_path, {"train.py": "X = 1\n"})
    tampered = project(tmp_path / "other", {"train.py": "import os; os.system('evil')\n"})
    cache = BundleCache(tmp_path / "state", Server({bundle.digest: tampered.data}).fetch)
    with pytest.raises(
        CodeUnavailable, match=f"digest mismatch: the job names sha256 {bundle.digest}"
    ):
        asyncio.run(cache.prepare(1, bundle.digest))
    assert leftovers(cache) == [] and not (cache.work / "job-1").exists()


def test_a_download_that_fails_says_why(tmp_path):
    cache = BundleCache(tmp_path / "state", Server({}).fetch)
    with pytest.raises(CodeUnavailable, match=r"could not download code bundle .*HTTP 404"):
        asyncio.run(cache.prepare(1, "a" * 64))


@pytest.mark.parametrize("digest", ["../../etc", "A" * 64, "a" * 63, ""])
def test_a_digest_that_is_not_a_sha256_is_refused_before_any_download(tmp_path, digest):
    server = Server({})
    cache = BundleCache(tmp_path / "state", server.fetch)
    with pytest.raises(CodeUnavailable, match="is not a bundle digest"):
        asyncio.run(cache.prepare(1, digest))
    assert server.downloads == 0


def test_an_archive_that_cannot_be_unpacked_leaves_nothing_behind(tmp_path):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, link in (("x", "."), ("x/x/x/y", "../../..")):
            item = tarfile.TarInfo(name)
            item.type, item.linkname = tarfile.SYMTYPE, link
            tar.addfile(item)
    data = gzip.compress(raw.getvalue())
    digest = hashlib.sha256(data).hexdigest()
    cache = BundleCache(tmp_path / "state", Server({digest: data}).fetch)
    with pytest.raises(CodeUnavailable, match="could not unpack code bundle .*symbolic link"):
        asyncio.run(cache.prepare(1, digest))
    assert leftovers(cache) == []


def test_a_node_refuses_code_of_a_kind_its_owner_did_not_accept():
    accepted = ("installed", "examples")
    assert refusal("examples.digits.train", None, accepted) is None
    assert refusal("mylab.train:main", None, accepted) is None
    why = refusal("train:main", "a" * 64, accepted)
    assert why is not None and "does not run code of kind 'bundles'" in why
    assert "AGENT_CODE is installed,examples" in why
    assert "kind 'installed'" in (refusal("mylab.train", None, ("bundles",)) or "")
