"""Link conditions as data: what a link does to packets. Preset values live in plugins."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class LinkLimits:
    rate_kbit: int = 0
    loss_pct: float = 0.0
    loss_correlation_pct: float = 0.0
    latency_ms: int = 0
    jitter_ms: int = 0
    reorder_pct: float = 0.0
    duplicate_pct: float = 0.0
    corrupt_pct: float = 0.0

    @property
    def is_clean(self) -> bool:
        return self == LinkLimits()


class LinkCondition:
    """A named preset (resolved through the `patchbay_link_presets` hook) or manual limits."""

    LAN: ClassVar[LinkCondition]
    WIFI: ClassVar[LinkCondition]
    WIFI_BAD: ClassVar[LinkCondition]
    MOBILE_4G: ClassVar[LinkCondition]
    MOBILE_3G: ClassVar[LinkCondition]
    SATELLITE: ClassVar[LinkCondition]
    SATELLITE_GEO: ClassVar[LinkCondition]
    REGIONAL: ClassVar[LinkCondition]
    INTERCONTINENTAL: ClassVar[LinkCondition]
    HIGH_LATENCY: ClassVar[LinkCondition]
    CHALLENGING: ClassVar[LinkCondition]

    __slots__ = ("limits", "name")

    def __init__(self, name: str | None = None, limits: LinkLimits | None = None) -> None:
        if (name is None) == (limits is None):
            raise ValueError("a LinkCondition is either a preset name or manual limits")
        self.name = name
        self.limits = limits

    @classmethod
    def manual(cls, limits: LinkLimits) -> LinkCondition:
        return cls(limits=limits)

    @classmethod
    def parse(cls, value: str | Mapping[str, Any] | LinkCondition | LinkLimits) -> LinkCondition:
        """Sim-file spellings: a preset name ("wifi-bad", "mobile_4g") or an inline table whose
        numbers may be strings ({"latency_ms": "100"})."""
        if isinstance(value, LinkCondition):
            return value
        if isinstance(value, LinkLimits):
            return cls.manual(value)
        if isinstance(value, str):
            return cls(name=value.strip().lower().replace("_", "-"))
        known = {f.name: f.type for f in fields(LinkLimits)}
        kwargs: dict[str, Any] = {}
        for key, raw in value.items():
            if key not in known:
                raise ValueError(f"unknown link condition field {key!r}; known: {', '.join(known)}")
            kind = int if known[key] in ("int", int) else float
            try:
                kwargs[key] = kind(raw)
            except (TypeError, ValueError):
                raise ValueError(f"link condition field {key!r}: {raw!r} is not a number") from None
        return cls.manual(LinkLimits(**kwargs))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinkCondition) and (self.name, self.limits) == (other.name, other.limits)

    def __hash__(self) -> int:
        return hash((self.name, self.limits))

    def __repr__(self) -> str:
        return f"LinkCondition({self.name!r})" if self.name else f"LinkCondition.manual({self.limits!r})"


for _name in ("lan", "wifi", "wifi-bad", "mobile-4g", "mobile-3g", "satellite", "satellite-geo",
              "regional", "intercontinental", "high-latency", "challenging"):
    setattr(LinkCondition, _name.upper().replace("-", "_"), LinkCondition(_name))
