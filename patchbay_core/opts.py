"""Options of a lab."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path


class Ipv6Provisioning(enum.Enum):
    STATIC = "static"
    RA_DRIVEN = "ra-driven"


class Ipv6Dad(enum.Enum):
    DISABLED = "disabled"
    ENABLED = "enabled"


@dataclass(frozen=True)
class OutDir:
    """Where a lab writes events and logs. `OutDir.nested(root)` (the default for a plain path)
    makes `<root>/<timestamp>-<label>/`; `OutDir.exact(path)` writes into `path` itself."""

    path: Path
    exact_dir: bool = False

    @classmethod
    def exact(cls, path: str | os.PathLike[str]) -> OutDir:
        return cls(Path(path), True)

    @classmethod
    def nested(cls, root: str | os.PathLike[str]) -> OutDir:
        return cls(Path(root), False)


@dataclass(frozen=True)
class LabOpts:
    label: str | None = None
    outdir: str | os.PathLike[str] | OutDir | None = None
    ipv6_provisioning: Ipv6Provisioning = Ipv6Provisioning.STATIC
    ipv6_dad: Ipv6Dad = Ipv6Dad.DISABLED
    link_backend: str = "auto"
    seed: int | None = None

    def resolved_outdir(self) -> OutDir | None:
        """`outdir`, else env PATCHBAY_OUTDIR, else None (nothing is written)."""
        value = self.outdir if self.outdir is not None else os.environ.get("PATCHBAY_OUTDIR") or None
        if value is None:
            return None
        return value if isinstance(value, OutDir) else OutDir.nested(value)
