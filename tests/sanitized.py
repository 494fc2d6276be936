"""The sanitizer builds of the C test drivers in native/tests, made by native/Makefile's targets."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

NATIVE = Path(__file__).resolve().parent.parent / "native"


def sanitized_driver(tmp: Path, sanitize: str, target: str) -> Path:
    """native/build/TARGET, built by make, or a skip when the C compiler cannot build with -fsanitize=."""
    probe = tmp / "probe"
    r = subprocess.run(
        [os.environ.get("CC", "cc"), "-x", "c", f"-fsanitize={sanitize}", "-o", str(probe), "-"],
        input="int main(void) { return 0; }\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        pytest.skip(f"the C compiler cannot build with sanitizers here: {r.stderr.strip()[-300:]}")
    r = subprocess.run(
        ["make", "-s", "-C", str(NATIVE), f"build/{target}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    return NATIVE / "build" / target
