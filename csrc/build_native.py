"""cffi builder for the C core (API mode, out of line): `patchbay_core._native`.

setup.py names this file in `cffi_modules`; the declarations come from csrc/patchbay.h.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["netns.c", "mntns.c", "rtnl.c", "nft.c", "proc.c", "userns.c", "wire.c"]


def _cdef_text() -> str:
    # cffi cannot run the preprocessor: keep every line of the header but the '#' ones.
    header = (HERE / "patchbay.h").read_text()
    return "\n".join(line for line in header.splitlines() if not line.lstrip().startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "patchbay_core._native",
    '#include "patchbay.h"',
    sources=[str(Path("csrc") / name) for name in SOURCES],
    include_dirs=["csrc"],
    libraries=["mnl", "nftables", "pthread"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
