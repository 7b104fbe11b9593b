"""Checks of the node's Python environment before the agent starts, each failing with what
to do. Today one: ``tensorflow`` and ``tensorflow-cpu`` (or two other TensorFlow builds)
installed side by side write the same ``tensorflow`` package over each other, and the
workers would import whichever was installed last — a GPU node silently training on the
CPU, or a CPU node failing to load CUDA libraries."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import metadata

# Distributions that all install the importable package ``tensorflow``.
TENSORFLOW_BUILDS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel")


class PreflightError(RuntimeError):
    """The environment cannot run workers correctly; the message says how to fix it."""


def _installed_distributions() -> Iterable[str]:
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            yield name


def check_environment(installed: Callable[[], Iterable[str]] = _installed_distributions) -> None:
    """Raise :class:`PreflightError` when the environment is unusable."""
    names = {name.lower().replace("_", "-") for name in installed()}
    builds = [b for b in TENSORFLOW_BUILDS if b in names]
    if len(builds) > 1:
        keep = "tensorflow" if "tensorflow" in builds else builds[0]
        remove = " ".join(b for b in builds if b != keep)
        raise PreflightError(
            f"both {' and '.join(builds)} are installed; they overwrite each other's "
            f"'tensorflow' package. Keep one: on a GPU node `pip uninstall -y {remove}` and "
            f"`pip install --force-reinstall 'adaptrain[node,gpu]'`; on a CPU node "
            "`pip uninstall -y tensorflow` and `pip install --force-reinstall "
            "'adaptrain[node,cpu]'`"
        )
