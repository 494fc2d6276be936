"""Shared test helpers: where the project's shared traces are (../shared/traces beside the checkout)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_TRACES = REPO.parent / "shared" / "traces"


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """The folder of real traces; a clear failure when the checkout has no ../shared beside it."""
    if not SHARED_TRACES.is_dir():
        pytest.fail(f"{SHARED_TRACES} is missing: the tests need the shared traces beside the checkout")
    return SHARED_TRACES
