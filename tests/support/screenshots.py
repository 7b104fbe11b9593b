"""Where the browser tests save their screenshots.

The README's pictures live in docs/screenshots/. A test run writes its screenshots to
test-artifacts/screenshots/ so that running the suite leaves the working tree as it was;
``ADAPTRAIN_UPDATE_SCREENSHOTS=1`` writes them to docs/screenshots/ instead, to refresh
the README's pictures on purpose.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def screenshots_dir() -> Path:
    if os.environ.get("ADAPTRAIN_UPDATE_SCREENSHOTS") == "1":
        path = ROOT / "docs" / "screenshots"
    else:
        path = ROOT / "test-artifacts" / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path
