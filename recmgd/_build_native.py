"""cffi API-mode builder of recmgd._native: the native pool (native/src/*.c) compiled into the extension.

Python then needs no librecmg.so at run time. `python recmgd/_build_native.py` builds in place;
setup.py names `ffibuilder` in cffi_modules.
"""

from __future__ import annotations

import re
from pathlib import Path

import cffi

ROOT = Path(__file__).resolve().parent.parent
NATIVE = ROOT / "native"
HEADER = NATIVE / "include" / "recmg.h"


def _cdef_from_header(text: str) -> str:
    """The header's declarations in the form cffi's cdef reads (no preprocessor, macros as constants)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out: list[str] = []
    skip = 0
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#ifdef __cplusplus"):
            skip = 1
            continue
        if skip:
            if s.startswith("#endif"):
                skip = 0
            continue
        if s.startswith("#define RECMG_LAYOUT_VERSION"):
            out.append("#define RECMG_LAYOUT_VERSION ...")
        elif (
            s.startswith("#define RECMG_F_")
            or s.startswith("#define RECMG_REC_LOOKUP")
            or s.startswith("#define RECMG_REC_BATCH_END")
            or s.startswith("#define RECMG_REC_HINT")
            or s.startswith("#define RECMG_REC_OWNER")
            or s.startswith("#define RECMG_ROW_BITS")
        ):
            name = s.split()[1]
            out.append(f"#define {name} ...")
        elif s.startswith("#"):
            continue
        else:
            out.append(line)
    return "\n".join(out)


def make_ffi(absolute: bool = False) -> cffi.FFI:
    """The builder; sources relative to the repository root (what setup.py needs) or absolute."""
    srcs = sorted((NATIVE / "src").glob("*.c"))
    sources = [str(p) if absolute else str(p.relative_to(ROOT)) for p in srcs]
    ffi = cffi.FFI()
    ffi.cdef(_cdef_from_header(HEADER.read_text()))
    ffi.set_source(
        "recmgd._native",
        '#include "recmg.h"',
        sources=sources,
        depends=[str(h) if absolute else str(h.relative_to(ROOT))
                 for h in sorted((NATIVE / "src").glob("*.h")) + [HEADER]],
        include_dirs=[str(NATIVE / "include")],
        libraries=["uring", "m"],
        extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-O2", "-fPIC", "-pthread"],
        extra_link_args=["-pthread"],
        py_limited_api=False,  # the same file name from setup.py and from this script
    )
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    import shutil

    built = make_ffi(absolute=True).compile(tmpdir=str(ROOT / "build" / "cffi"), verbose=False)
    shutil.copy2(built, ROOT / "recmgd" / Path(built).name)
