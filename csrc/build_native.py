"""cffi builder for the C core (API mode, out of line): `patchbay_core._native`.

setup.py names this file in `cffi_modules`; the declarations come from csrc/patchbay.h and
csrc/nat64.h.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["netns.c", "mntns.c", "rtnl.c", "nft.c", "proc.c", "userns.c", "wire.c", "nat64.c", "capture.c"]
# Headers whose declarations cffi reads (each also #included by the generated module).
HEADERS = ["patchbay.h", "nat64.h", "capture.h"]


def _cdef_text() -> str:
    # cffi cannot run the preprocessor: keep every line of the headers but the '#' ones.
    lines: list[str] = []
    for name in HEADERS:
        header = (HERE / name).read_text()
        lines.extend(line for line in header.splitlines() if not line.lstrip().startswith("#"))
    return "\n".join(lines)


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "patchbay_core._native",
    "\n".join(f'#include "{name}"' for name in HEADERS),
    sources=[str(Path("csrc") / name) for name in SOURCES],
    include_dirs=["csrc"],
    libraries=["mnl", "nftables", "pthread"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
