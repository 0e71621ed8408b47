"""Where the reference-parity fixtures are, and the per-tensor report every parity check prints.

Folders come from ``PADT_PARITY_FIXTURES`` (colon-separated paths) or, by default, every folder under
``<repo>/../shared/parity``. When none is found the default path is returned anyway, so that tests using it
fail instead of silently passing.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "parity"
REPORT: list[str] = []


def fixture_dirs() -> list[Path]:
    env = os.environ.get("PADT_PARITY_FIXTURES")
    if env:
        return [Path(p) for p in env.split(":") if p]
    found = sorted(p for p in DEFAULT_ROOT.glob("*") if p.is_dir()) if DEFAULT_ROOT.is_dir() else []
    return found or [DEFAULT_ROOT / "<no fixture folder found>"]


def report(line: str) -> None:
    """Record one comparison; conftest.py prints them all at the end of the run."""
    REPORT.append(line)
