"""Shared test helpers: where the project's shared traces are (../shared/traces beside the checkout), and a
small disk that fills up."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """small_disk(size): a folder on a tmpfs of that size ("64k"), a real disk that fills up; unmounted
    at the end. Skips where no tmpfs can be mounted (not root)."""
    mounts: list[Path] = []

    def make(size: str = "64k") -> Path:
        d = tmp_path / f"small{len(mounts)}"
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs (needs root): {r.stderr.strip()}")
        mounts.append(d)
        return d

    yield make
    for d in mounts:
        subprocess.run(["umount", str(d)], check=False)
