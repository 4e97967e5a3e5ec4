"""Variable interpolation in sim strings.

Three stages, each at its own time:
- `${matrix.KEY}`: when the file is loaded, per variant (anywhere in string values);
- `${group.KEY}`: when a step group is expanded (before run time); what it leaves, such as
  `${relay-cert.cert_pem_path}` out of `${${group.device}-cert.cert_pem_path}`, is resolved later;
- at run time: `${binary.NAME}`, `${STEP_ID.CAPTURE}` (waits until the capture has a value) and
  `$NETSIM_IP_<DEVICE>` (also `${NETSIM_IP_<DEVICE>}`). Other `$NAME`s are left for the shell.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

_DOLLAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NETSIM_PREFIX = "NETSIM_"


def env_key(name: str) -> str:
    """A node name as it appears in `$NETSIM_IP_<NAME>`: upper case, other than [A-Z0-9] -> "_"."""
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


def netsim_ip_var(node: str) -> str:
    return f"NETSIM_IP_{env_key(node)}"


# ---- load-time stages -----------------------------------------------------------------------


def substitute_prefixed(text: str, prefix: str, values: Mapping[str, str],
                        missing: Callable[[str], Exception]) -> str:
    """Replace every `${PREFIX.KEY}` in `text`; `missing(key)` makes the error for an unknown key."""
    pattern = re.compile(r"\$\{" + re.escape(prefix) + r"\.([^{}]*)\}")

    def one(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise missing(key)
        return values[key]

    return pattern.sub(one, text)


def prefixed_keys(text: str, prefix: str) -> list[str]:
    return re.findall(r"\$\{" + re.escape(prefix) + r"\.([^{}]*)\}", text)


def scalar_text(value: object) -> str | None:
    """A TOML scalar as the text it substitutes (booleans spelled as in TOML); None for a
    table or an array."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    return None


# ---- run-time references --------------------------------------------------------------------


@dataclass
class Refs:
    """What a string refers to, for checks before anything runs."""

    binaries: list[str] = field(default_factory=list)
    captures: list[str] = field(default_factory=list)  # "step_id.capture"
    vars: list[str] = field(default_factory=list)  # NETSIM_* names (as written)
    unknown: list[str] = field(default_factory=list)  # ${NAME} that is none of these


@dataclass(frozen=True)
class _Part:
    kind: str  # "text", "brace" (${...}) or "dollar" ($NAME)
    value: str


def _parts(text: str) -> list[_Part]:
    parts: list[_Part] = []
    i, start = 0, 0
    while True:
        i = text.find("$", start)
        if i < 0:
            parts.append(_Part("text", text[start:]))
            return parts
        if text.startswith("${", i):
            end = text.find("}", i + 2)
            inner = text[i + 2:end] if end >= 0 else ""
            if end < 0:
                raise ValueError(f"unclosed '${{' at position {i} (write ${{name}})")
            if "${" in inner or "{" in inner:
                raise ValueError(f"nested '${{' in ${{{inner}}}; only ${{group.*}} may be nested, inside a "
                                 "[[step-group]]")
            if not inner.strip():
                raise ValueError("empty ${}")
            parts.append(_Part("text", text[start:i]))
            parts.append(_Part("brace", inner.strip()))
            start = end + 1
            continue
        m = _DOLLAR_NAME.match(text, i + 1)
        if m is None:
            parts.append(_Part("text", text[start:i + 1]))
            start = i + 1
            continue
        parts.append(_Part("text", text[start:i]))
        parts.append(_Part("dollar", m.group(0)))
        start = m.end()


def split_capture_key(key: str) -> tuple[str, str] | None:
    """"step_id.capture" -> (step_id, capture); ids may hold dots, capture names do not."""
    sid, dot, name = key.rpartition(".")
    if not dot or not sid or not name:
        return None
    return sid, name


def references(text: str) -> Refs:
    """The run-time references of `text`. Raises ValueError on a malformed `${`."""
    refs = Refs()
    for part in _parts(text):
        if part.kind == "dollar":
            if part.value.upper().startswith(NETSIM_PREFIX):
                refs.vars.append(part.value)
        elif part.kind == "brace":
            key = part.value
            if key.startswith("binary."):
                refs.binaries.append(key[len("binary."):])
            elif key.upper().startswith(NETSIM_PREFIX) and "." not in key:
                refs.vars.append(key)
            elif split_capture_key(key) is not None:
                refs.captures.append(key)
            else:
                refs.unknown.append(key)
    return refs


class Resolver(Protocol):
    """What run-time interpolation looks values up in (the runner provides one per sim)."""

    def binary(self, name: str) -> str: ...

    def var(self, name: str) -> str | None: ...

    def capture(self, key: str) -> Awaitable[str]: ...


async def interpolate(text: str, resolver: Resolver) -> str:
    """Resolve every reference of `text` (waiting for captures that have no value yet)."""
    if "$" not in text:
        return text
    out: list[str] = []
    for part in _parts(text):
        if part.kind == "text":
            out.append(part.value)
        elif part.kind == "dollar":
            value = resolver.var(part.value) if part.value.upper().startswith(NETSIM_PREFIX) else None
            out.append(value if value is not None else "$" + part.value)
        elif part.value.startswith("binary."):
            out.append(resolver.binary(part.value[len("binary."):]))
        elif part.value.upper().startswith(NETSIM_PREFIX) and "." not in part.value:
            value = resolver.var(part.value)
            out.append(value if value is not None else "${" + part.value + "}")
        else:
            out.append(await resolver.capture(part.value))
    return "".join(out)


def rewrite_counted(text: str, bases: Mapping[str, int], index: int) -> str:
    """For the `index`-th copy of a counted step: `${base.x}` -> `${base-i.x}` and
    `$NETSIM_IP_BASE` -> `$NETSIM_IP_BASE_i`, where i = index mod the count of `base`."""
    if "$" not in text or not bases:
        return text
    out: list[str] = []
    for part in _parts(text):
        if part.kind == "text":
            out.append(part.value)
        elif part.kind == "brace":
            key = part.value
            split = split_capture_key(key)
            if split is not None and split[0] in bases and not key.startswith("binary."):
                sid, name = split
                key = f"{sid}-{index % bases[sid]}.{name}"
            elif key.upper().startswith("NETSIM_IP_"):
                key = _rewrite_var(key, bases, index)
            out.append("${" + key + "}")
        else:
            out.append("$" + (_rewrite_var(part.value, bases, index) if part.value.upper().startswith("NETSIM_IP_")
                              else part.value))
    return "".join(out)


def _rewrite_var(name: str, bases: Mapping[str, int], index: int) -> str:
    suffix = env_key(name[len("NETSIM_IP_"):])
    for base, count in bases.items():
        if env_key(base) == suffix:
            return netsim_ip_var(f"{base}-{index % count}")
    return name
