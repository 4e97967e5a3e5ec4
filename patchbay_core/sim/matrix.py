"""`[matrix]`: many sims out of one file, by Cartesian product of its axes.

    [matrix]
    cond = ["baseline", "impaired"]
    [matrix.params.cond]
    impaired = { latency = "200" }

Each variant maps `${matrix.cond}` to its axis value and flattens the params of that value into
the same namespace (`${matrix.latency}`). Substitution walks every string value of the
document (never its keys); an unknown key is an error at the string that names it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .interpolate import prefixed_keys, scalar_text, substitute_prefixed
from .model import Where

KeyPath = tuple[str | int, ...]
MAX_VARIANTS = 1024  # a matrix larger than this is a typo, not a plan
At = Callable[[KeyPath], Where]


@dataclass
class Variant:
    values: dict[str, str]  # every ${matrix.*} key of this variant
    axes: dict[str, str]  # the axis values alone, in axis order


def variants(matrix: object, at: At) -> list[Variant]:
    """The variants of a `[matrix]` table (one empty variant when there is none)."""
    if matrix is None:
        return [Variant({}, {})]
    if not isinstance(matrix, Mapping):
        raise at(("matrix",)).error("expected a table of axes: [matrix] with topo = [\"a\", \"b\"]")
    axes: dict[str, list[str]] = {}
    for axis, values in matrix.items():
        if axis == "params":
            continue
        path: KeyPath = ("matrix", axis)
        if not isinstance(values, list) or not values:
            raise at(path).error(f"matrix axis {axis!r} must be a non-empty array of strings, such as "
                                 f"{axis} = [\"a\", \"b\"]")
        texts = []
        for i, v in enumerate(values):
            text = scalar_text(v)
            if text is None:
                raise at((*path, i)).error(f"matrix axis {axis!r}: values are strings, got a table or array")
            texts.append(text)
        if len(set(texts)) != len(texts):
            raise at(path).error(f"matrix axis {axis!r} lists a value twice")
        axes[axis] = texts
    if not axes:
        raise at(("matrix",)).error("[matrix] has no axis; add one such as topo = [\"1to1\", \"1to3\"]")
    size = math.prod(len(v) for v in axes.values())
    if size > MAX_VARIANTS:
        raise at(("matrix",)).error(f"the matrix makes {size} sims; at most {MAX_VARIANTS}")
    params = _params(matrix.get("params"), axes, at)
    out = []
    for combo in itertools.product(*axes.values()):
        chosen = dict(zip(axes, combo, strict=True))
        values = dict(chosen)
        for axis, value in chosen.items():
            for key, pvalue in params.get(axis, {}).get(value, {}).items():
                values[key] = pvalue
        out.append(Variant(values, chosen))
    return out


def _params(raw: object, axes: Mapping[str, list[str]], at: At) -> dict[str, dict[str, dict[str, str]]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise at(("matrix", "params")).error("expected [matrix.params.AXIS] tables: value = { key = \"...\" }")
    out: dict[str, dict[str, dict[str, str]]] = {}
    for axis, table in raw.items():
        path: KeyPath = ("matrix", "params", axis)
        if axis not in axes:
            raise at(path).error(f"params for {axis!r}, which is not a matrix axis (axes: {', '.join(axes)})")
        if not isinstance(table, Mapping):
            raise at(path).error(f"expected a table: [matrix.params.{axis}] with one entry per value of {axis!r}")
        out[axis] = {}
        for value, entries in table.items():
            vpath = (*path, value)
            if value not in axes[axis]:
                raise at(vpath).error(f"{value!r} is not a value of axis {axis!r} (values: {', '.join(axes[axis])})")
            if not isinstance(entries, Mapping):
                raise at(vpath).error(f"expected a table of placeholder values: {value} = {{ key = \"...\" }}")
            flat: dict[str, str] = {}
            for key, v in entries.items():
                if key in axes:
                    raise at((*vpath, key)).error(f"param {key!r} has the name of a matrix axis; rename it")
                text = scalar_text(v)
                if text is None:
                    raise at((*vpath, key)).error(f"param {key!r}: values are strings, got a table or array")
                flat[key] = text
            out[axis][value] = flat
    return out


def substitute(value: Any, values: Mapping[str, str], at: At, path: KeyPath, defined: bool) -> Any:
    """`value` with every `${matrix.KEY}` replaced; `defined` says whether the file has a [matrix]."""
    if isinstance(value, str):
        if "${matrix." not in value:
            return value

        def missing(key: str) -> Exception:
            if not defined:
                return at(path).error(f"${{matrix.{key}}} is used but the file has no [matrix] table")
            known = ", ".join(sorted(values)) or "none"
            return at(path).error(f"${{matrix.{key}}} is not defined in [matrix] (axes and params: {known})")

        return substitute_prefixed(value, "matrix", values, missing)
    if isinstance(value, list):
        return [substitute(v, values, at, (*path, i), defined) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: substitute(v, values, at, (*path, k), defined) for k, v in value.items()}
    return value


def used_keys(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(prefixed_keys(value, "matrix"))
    if isinstance(value, list):
        return {k for v in value for k in used_keys(v)}
    if isinstance(value, Mapping):
        return {k for v in value.values() for k in used_keys(v)}
    return set()
