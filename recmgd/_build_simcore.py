"""cffi API-mode builder of ``recmgd._simcore``: the C core of the classical policies and the simulator,
and the caching model's inference (cachemodel.c, bridged by recmgd/models/fastinfer.py).

Built by setup.py (``cffi_modules=["recmgd/_build_simcore.py:ffibuilder"]``) or in place with
``python recmgd/_build_simcore.py`` from the repository root. C sources: ``native/policy/``; the cdef is
read from their headers (simcore.h, cachemodel.h, hazard.h), so the declarations live in one place.
"""

from __future__ import annotations

import os
import re

from cffi import FFI

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SRC_DIR = "native/policy"
_SOURCES = ["alloc.c", "idmap.c", "policy.c", "cache.c", "prefetch.c", "driver.c", "dedup.c", "cachemodel.c",
            "hazard.c", "learned.c", "once.c"]


def header_cdef(path: str) -> str:
    """The declarations of a C header as a cffi cdef: its comments, include guard and #include lines
    dropped, and each integer ``#define`` kept and also written into the declarations that use it
    (cffi wants literal array sizes)."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"/\*.*?\*/", "", f.read(), flags=re.S)
    consts: dict[str, str] = {}
    body: list[str] = []
    for line in text.splitlines():
        m = re.match(r"\s*#\s*define\s+(\w+)\s+\(?\s*(-?\d+)\s*\)?\s*$", line)
        if m:
            consts[m.group(1)] = m.group(2)
            body.append(f"#define {m.group(1)} {m.group(2)}")
        elif not line.lstrip().startswith("#"):
            body.append(line)
    out = "\n".join(body)
    for name, value in consts.items():
        out = re.sub(rf"\[{name}\]", f"[{value}]", out)
    return out + "\n"


def make_builder(root: str = "") -> FFI:
    """The FFI builder; ``root`` prefixes the C paths (empty: relative to the repository root)."""
    src = os.path.join(root, _SRC_DIR) if root else _SRC_DIR
    builder = FFI()
    builder.cdef(header_cdef(f"{src}/simcore.h") + header_cdef(f"{src}/cachemodel.h")
                 + header_cdef(f"{src}/hazard.h") + header_cdef(f"{src}/learned.h"))
    builder.set_source(
        "recmgd._simcore",
        '#include "simcore.h"\n#include "cachemodel.h"\n#include "hazard.h"\n#include "learned.h"',
        sources=[f"{src}/{name}" for name in _SOURCES],
        include_dirs=[src],
        extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"],
        # the same file name from setup.py and from this script (an abi3 name from one and a
        # cpython-311 one from the other let a stale build shadow a new one)
        py_limited_api=False,
    )
    return builder


ffibuilder = make_builder()

if __name__ == "__main__":
    import shutil

    built = make_builder(_ROOT).compile(tmpdir=os.path.join(_ROOT, "build", "simcore"), verbose=False)
    shutil.copy2(built, os.path.join(_ROOT, "recmgd", os.path.basename(built)))
