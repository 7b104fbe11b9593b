"""The native library's C++ sources are formatted with clang-format.

Every .cc and .h under agent/native must come out of clang-format unchanged under the
repository's .clang-format. The check uses the clang-format wheel pinned in pyproject.toml's
`test` extra rather than whatever the system has, because clang-format's output changes
between major versions. A failure names the files and the command that formats them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
NATIVE = ROOT / "agent" / "native"
STYLE = ROOT / ".clang-format"
VIOLATION = "[-Wclang-format-violations]"


def clang_format() -> str:
    try:
        import clang_format as wheel
    except ImportError:
        pytest.fail("the clang-format wheel is needed: pip install -e '.[test]'")
    return wheel.get_executable("clang-format")


def test_native_sources_are_clang_formatted() -> None:
    sources = sorted(
        str(path.relative_to(ROOT))
        for path in NATIVE.rglob("*")
        if path.suffix in {".cc", ".h"} and path.is_file()
    )
    assert sources, f"no C++ sources under {NATIVE}"
    completed = subprocess.run(
        [clang_format(), f"--style=file:{STYLE}", "--dry-run", "--Werror", *sources],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if completed.returncode == 0:
        return
    unformatted = sorted(
        {line.split(":", 1)[0] for line in completed.stderr.splitlines() if VIOLATION in line}
    )
    if not unformatted:
        pytest.fail(f"clang-format failed (exit {completed.returncode}):\n{completed.stderr}")
    pytest.fail(
        f"{len(unformatted)} C++ file(s) are not clang-formatted:\n  "
        + "\n  ".join(unformatted)
        + "\nformat them from the repository root with:\n  clang-format -i "
        + " ".join(unformatted)
    )
