"""Code bundles (adaptrain.bundle): what is packed follows git's ignore rules (checked against
git itself), the digest depends only on content, oversized projects are refused naming the
biggest files, and unpacking refuses archives that would escape the job's directory."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import time

import pytest

from adaptrain.bundle import BundleError, check_digest, pack, unpack

TREE = {
    "train.py": "print('hi')\n",
    "model/__init__.py": "",
    "model/net.py": "x = 1\n",
    "model/net.pyc": "compiled",
    "data/big.npy": "0" * 100,
    "data/keep.txt": "keep",
    "logs/run1.log": "log",
    "logs/important.log": "keep me",
    "notes/a.md": "a",
    "notes/deep/b.md": "b",
    "build/out.o": "o",
    "src/build/gen.py": "generated",
    "docs/build": "a file named build",
    "weird name.txt": "spaces",
    "[x].txt": "brackets",
    "sub/.gitignore": "*.tmp\n!keep.tmp\n/only-here.txt\n",
    "sub/a.tmp": "t",
    "sub/keep.tmp": "t",
    "sub/only-here.txt": "anchored",
    "sub/inner/only-here.txt": "not anchored here",
    "sub/inner/c.tmp": "t",
    ".gitignore": (
        "# comment\n"
        "*.log\n"
        "!important.log\n"
        "data/*.npy\n"
        "build/\n"
        "/notes/**/b.md\n"
        "\\[x\\].txt\n"
        "weird?name.txt\n"
    ),
    ".adaptrainignore": "data/keep.txt\n",
    "__pycache__/cached.cpython-311.pyc": "c",
}


def make_tree(root, files=TREE):
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def git_kept(root) -> set[str]:
    """What git itself would keep (tracked-able files), minus .adaptrainignore's own rules."""
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    out = subprocess.run(
        ["git", "-C", str(root), "ls-files", "--others", "--exclude-standard"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    shutil.rmtree(root / ".git")
    return set(out.split("\n")) - {""}


def test_what_is_packed_follows_gits_ignore_rules(tmp_path):
    root = make_tree(tmp_path / "p")
    expected = git_kept(root) - {"data/keep.txt"}  # .adaptrainignore excludes it as well
    expected = {f for f in expected if "__pycache__" not in f and not f.endswith(".pyc")}
    bundle = pack(root)
    assert set(bundle.files) == expected
    # Spot checks of the rules git applied, so the test says what it proves.
    assert {"logs/important.log", "sub/keep.tmp", "docs/build", "sub/inner/only-here.txt"} <= set(
        bundle.files
    )
    assert not {
        "logs/run1.log",
        "build/out.o",
        "src/build/gen.py",
        "sub/only-here.txt",
        "sub/a.tmp",
        "sub/inner/c.tmp",
        "notes/deep/b.md",
        "[x].txt",
        "weird name.txt",
        "model/net.pyc",
        "data/big.npy",
    } & set(bundle.files)


def test_adaptrainignore_can_re_include_what_git_ignores(tmp_path):
    root = make_tree(
        tmp_path / "p",
        {"a.py": "", "w.bin": "w", ".gitignore": "*.bin\n", ".adaptrainignore": "!w.bin\n"},
    )
    assert "w.bin" in pack(root).files


def test_the_digest_depends_only_on_content_not_on_times_or_order_of_creation(tmp_path):
    first = make_tree(tmp_path / "one")
    second = tmp_path / "two"
    for name in sorted(TREE, reverse=True):  # created in another order, later
        path = second / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(TREE[name])
        os.utime(path, (time.time() + 1000, time.time() + 1000))
    a, b = pack(first), pack(second)
    assert a.digest == b.digest and a.data == b.data
    assert a.digest == hashlib.sha256(a.data).hexdigest()
    (second / "train.py").write_text("print('changed')\n")
    assert pack(second).digest != a.digest
    (second / "train.py").write_text(TREE["train.py"])
    (second / "train.py").chmod(0o755)  # the executable bit is content
    assert pack(second).digest != a.digest


def test_an_oversized_project_is_refused_naming_its_biggest_files(tmp_path):
    root = make_tree(
        tmp_path / "p", {"train.py": "x", "weights.bin": "0" * 3000, "data.csv": "1" * 2000}
    )
    with pytest.raises(BundleError) as exc:
        pack(root, limit_bytes=4096)
    message = str(exc.value)
    assert "over the 4.0 KiB limit" in message
    assert message.index("weights.bin (2.9 KiB)") < message.index("data.csv (2.0 KiB)")
    assert ".adaptrainignore" in message


def test_links_inside_the_project_are_kept_and_links_out_of_it_refused(tmp_path):
    root = make_tree(tmp_path / "p", {"train.py": "x", "lib/util.py": "u"})
    os.symlink("lib/util.py", root / "util.py")
    bundle = pack(root)
    assert "util.py" in bundle.files
    out = tmp_path / "out"
    unpack(bundle.data, out)
    assert os.readlink(out / "util.py") == "lib/util.py" and (out / "util.py").read_text() == "u"
    os.symlink("/etc/passwd", root / "passwd")
    with pytest.raises(BundleError, match="passwd is a symbolic link to /etc/passwd, outside"):
        pack(root)


def test_an_empty_or_missing_project_is_refused(tmp_path):
    with pytest.raises(BundleError, match="is not a directory"):
        pack(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="no files to pack"):
        pack(tmp_path / "empty")


def test_unpack_restores_files_and_modes(tmp_path):
    root = make_tree(tmp_path / "p", {"train.py": "x", "run.sh": "#!/bin/sh\n", "pkg/m.py": "m"})
    (root / "run.sh").chmod(0o755)
    bundle = pack(root)
    out = tmp_path / "job-1"
    assert sorted(unpack(bundle.data, out)) == ["pkg/m.py", "run.sh", "train.py"]
    assert (out / "pkg/m.py").read_text() == "m" and os.access(out / "run.sh", os.X_OK)


def evil(*members: tuple[str, bytes | None, str | None]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content, link in members:
            item = tarfile.TarInfo(name)
            if link is not None:
                item.type = tarfile.SYMTYPE
                item.linkname = link
                tar.addfile(item)
            else:
                item.size = len(content or b"")
                tar.addfile(item, io.BytesIO(content or b""))
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize(
    "archive, message",
    [
        (evil(("../escape.py", b"x", None)), "would land outside"),
        (evil(("/etc/cron.d/x", b"x", None)), "would land outside"),
        (evil(("a/../../b", b"x", None)), "would land outside"),
        (evil(("link", None, "/etc")), "links to '/etc', outside"),
        (evil(("d/link", None, "../../x")), "links to '../../x', outside"),
        (b"not a tar at all", "not a valid bundle"),
    ],
)
def test_unpack_refuses_archives_that_escape_the_job_directory_before_writing(
    tmp_path, archive, message
):
    out = tmp_path / "job"
    with pytest.raises(BundleError, match=message):
        unpack(archive, out)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "archive, message",
    [
        # "x" -> "." is harmless alone; written through it three levels down, "y" would
        # point three levels up from the job's directory.
        (evil(("x", None, "."), ("x/x/x/y", None, "../../..")), "lies under 'x', a symbolic"),
        (evil(("lib", None, "."), ("lib/evil.py", b"x", None)), "lies under 'lib'"),
        # Each link stays inside on its own; one through the other leads out.
        (
            evil(("real/.keep", b"", None), ("b", None, "real/.."), ("c", None, "b/..")),
            "leads outside the job's directory",
        ),
        (evil(("a.py", b"1", None), ("a.py", b"2", None)), "appears twice"),
    ],
)
def test_unpack_refuses_links_that_lead_out_through_other_links(tmp_path, archive, message):
    outside = tmp_path / "outside-marker"
    with pytest.raises(BundleError, match=message):
        unpack(archive, tmp_path / "deep" / "job")
    assert not outside.exists() and not (tmp_path / "evil.py").exists()


def test_unpack_refuses_an_archive_that_unpacks_too_big(tmp_path):
    archive = evil(("a.bin", b"0" * 5000, None))
    with pytest.raises(BundleError, match="over the"):
        unpack(archive, tmp_path / "job", limit_bytes=4096)


def test_a_digest_mismatch_is_an_error_naming_both(tmp_path):
    bundle = pack(make_tree(tmp_path / "p", {"a.py": "a"}))
    check_digest(bundle.data, bundle.digest)
    with pytest.raises(BundleError, match=f"expected sha256 {'0' * 64}, got {bundle.digest}"):
        check_digest(bundle.data, "0" * 64)


def test_an_archive_made_with_tar_from_inside_the_project_unpacks(tmp_path):
    # What the new-job form's hint says to run: entries "./", "./train.py", "./pkg/…".
    project = make_tree(tmp_path / "p", {"train.py": "X = 1\n", "pkg/m.py": "Y = 2\n"})
    archive = tmp_path / "project.tar.gz"
    subprocess.run(["tar", "czf", str(archive), "-C", str(project), "."], check=True)
    unpack(archive.read_bytes(), tmp_path / "job")
    assert (tmp_path / "job" / "train.py").read_text() == "X = 1\n"
    assert (tmp_path / "job" / "pkg" / "m.py").read_text() == "Y = 2\n"
