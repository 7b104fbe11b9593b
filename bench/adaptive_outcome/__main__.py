"""``python -m bench.adaptive_outcome``."""

from bench.adaptive_outcome.cli import main

main()
