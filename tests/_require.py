"""Components a test needs that the machine may lack (Debian packages, the console script).

Outside CI a developer without them sees the test skipped, with the command that installs them;
under ``CI=true`` the same test fails: a CI run that skips what it promises proves less than it
says (scripts/system-deps.sh installs everything on a Debian machine).
"""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(available: bool, what: str) -> None:
    """Skip (or, under ``CI=true``, fail) the calling test unless ``available``."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"missing under CI=true: {what}", pytrace=False)
    pytest.skip(what)
