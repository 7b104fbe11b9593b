"""The native library's C++ unit tests, configured, built and run by the test command.

The unit tests (agent/native/tests/*.cc: reduce kernels with float16, segment
and tree arithmetic, the header's wire format, tunable parsing) are a CMake
target the wheel build skips (COLLECTIVE_BUILD_TESTS=OFF there). This test
configures agent/native with the tests on and the Python module off, builds
with AddressSanitizer and UndefinedBehaviorSanitizer into build/cpp-unit-tests
(kept between runs, so a rebuild is incremental), runs the binary and fails
with its output if any check failed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "agent" / "native"
BUILD = ROOT / "build" / "cpp-unit-tests"


def tool(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    found = str(beside_python) if beside_python.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is needed to build the C++ unit tests: pip install {name}")
    return found


def run(command: list[str], what: str, timeout_s: float) -> str:
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    output = completed.stdout + completed.stderr
    if completed.returncode != 0:
        pytest.fail(f"{what} failed (exit {completed.returncode}):\n{output[-6000:]}")
    return output


def test_cpp_unit_tests_build_and_pass() -> None:
    configure = [
        tool("cmake"),
        "-S",
        str(SOURCE),
        "-B",
        str(BUILD),
        "-DCOLLECTIVE_BUILD_PYTHON=OFF",
        "-DCOLLECTIVE_BUILD_TESTS=ON",
        "-DCMAKE_BUILD_TYPE=Debug",
        "-DCMAKE_CXX_FLAGS=-fsanitize=address,undefined -fno-sanitize-recover=all "
        "-fno-omit-frame-pointer",
    ]
    if not (BUILD / "CMakeCache.txt").exists():
        ninja = Path(sys.executable).parent / "ninja"
        if ninja.exists():
            configure += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
    run(configure, "configuring the C++ unit tests", timeout_s=120)
    run(
        [tool("cmake"), "--build", str(BUILD), "--target", "collective_unit_tests"],
        "building the C++ unit tests",
        timeout_s=300,
    )
    output = run([str(BUILD / "collective_unit_tests")], "the C++ unit tests", timeout_s=120)
    assert " 0 failed" in output, output
    print(output.strip().splitlines()[-1])
