"""Shared by the VM tests (tests/test_vm_*.py): the NUMA test VM tool (tools/numa_vm.py) and what it
needs, prepared once per test session.

When qemu or the kernel cannot be had, the VM tests skip only if this process is not root (it could not
install them); as root (CI) that is a failure: `make sysdeps` installs what the VM needs.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def _load_tool() -> ModuleType:
    name = "numa_vm"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / "numa_vm.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


numa_vm = _load_tool()


@functools.cache
def _prepare() -> Any:
    try:
        return numa_vm.prepare()
    except numa_vm.VMUnavailable as exc:
        return exc


def prepared() -> Any:
    """numa_vm.Prepared, or skip (not root: cannot install) or fail (root) saying what is missing."""
    p = _prepare()
    if isinstance(p, numa_vm.VMUnavailable):
        if os.geteuid() != 0:
            pytest.skip(f"the NUMA test VM cannot run here and this process is not root to install it: {p}")
        pytest.fail(f"the NUMA test VM cannot run: {p} (`make sysdeps` as root installs qemu-system-x86 and "
                    "busybox-static)", pytrace=False)
    return p


def last_json(output: str) -> dict[str, Any]:
    """The JSON report that a guest script prints as its last line of output."""
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    raise AssertionError(f"the guest printed no JSON report; its output ends: {output[-2000:]}")
