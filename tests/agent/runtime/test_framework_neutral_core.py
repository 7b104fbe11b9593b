"""The runtime's core imports no deep-learning framework: ``from agent import runtime`` and
every module but the TensorFlow edge (``tf``, ``step``) load without TensorFlow, so a
PyTorch edge can sit next to it and tools that only need the session stay light."""

from __future__ import annotations

import os
import subprocess
import sys

from agent.local import ROOT

CORE = [
    "agent.runtime",
    "agent.runtime.adapter",
    "agent.runtime.channel",
    "agent.runtime.checkpoint",
    "agent.runtime.commands",
    "agent.runtime.launcher",
    "agent.runtime.membership",
    "agent.runtime.monitors",
    "agent.runtime.sampler",
    "agent.runtime.scaling",
    "agent.runtime.session",
    "agent.runtime.strategies",
    "agent.runtime.trainer",
]


def test_importing_the_runtime_core_loads_no_framework():
    script = (
        "import importlib, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_tensorflow_names_of_the_public_api_load_on_first_use():
    script = (
        "import sys\n"
        "from agent import runtime\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print(runtime.Trainer.__module__, 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout
    assert out.split() == ["agent.runtime.tf", "True"]
