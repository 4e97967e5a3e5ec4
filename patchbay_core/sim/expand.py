"""From `[[step]]` entries to a flat list of steps: templates, groups, then counted devices.

- `use = "template"`: the call site's fields go on top of the template: `args` is appended to
  its `cmd`, `env` and `captures` are merged (the call site wins), `requires` is appended,
  `results` replaces, every other field replaces.
- `use = "group"` (with `vars`): the group's steps, with `${group.KEY}` replaced by the caller's
  value first; what that leaves (`${relay-cert.cert_pem_path}`) is resolved at run time. Group
  steps may use templates; groups do not nest.
- A step on a counted device (`count = N` in the topology) becomes N steps, on `NAME-0` …
  `NAME-(N-1)`, their ids suffixed alike; references to other counted names inside them follow
  the index (modulo that name's count).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# One spelling of the "did you mean" hints for topology and sim files.
from ..topofile import _did_you_mean as did_you_mean
from .interpolate import rewrite_counted, scalar_text, split_capture_key, substitute_prefixed
from .model import Check, Step, Where
from .source import KeyPath, SourceFile


@dataclass(frozen=True)
class Loc:
    """A table in a source file, by key path."""

    src: SourceFile
    path: KeyPath

    def at(self, *more: str | int, step: str | None = None) -> Where:
        return self.src.at((*self.path, *more), step)

    def child(self, *more: str | int) -> Loc:
        return Loc(self.src, (*self.path, *more))


@dataclass
class RawStep:
    """A step table before it is parsed, with where each of its keys was written."""

    table: dict[str, Any]
    loc: Loc  # the step table (the call site for template uses)
    locs: dict[str, Loc] = field(default_factory=dict)  # "key" or "key.sub" -> where it was written
    skip: bool = False  # the group call site said when = "false"
    via: str | None = None  # "template 'x'" / "group 'y'", for messages

    def loc_of(self, key: str, sub: str | None = None) -> Loc:
        if sub is not None and f"{key}.{sub}" in self.locs:
            return self.locs[f"{key}.{sub}"]
        base = self.locs.get(key)
        if base is None:
            return self.loc.child(key) if sub is None else self.loc.child(key, sub)
        return base if sub is None else base.child(sub)


@dataclass
class Definition:
    name: str
    loc: Loc
    table: dict[str, Any] | None = None  # a template's fields (without name)
    steps: list[tuple[dict[str, Any], Loc]] = field(default_factory=list)  # a group's steps


def _is_false(value: object) -> bool:
    return value is False or (isinstance(value, str) and value.strip().lower() == "false")


# ---- templates and groups -------------------------------------------------------------------


def expand_uses(entries: list[tuple[object, Loc]], templates: Mapping[str, Definition],
                groups: Mapping[str, Definition]) -> list[RawStep]:
    out: list[RawStep] = []
    for table, loc in entries:
        if not isinstance(table, Mapping):
            raise loc.at().error("expected a [[step]] table")
        if "use" not in table:
            out.append(_concrete(dict(table), loc))
            continue
        name = table["use"]
        if not isinstance(name, str):
            raise loc.at("use").error("expected the name of a [[step-template]] or [[step-group]] (a string)")
        if name in groups:
            out.extend(_group_call(dict(table), loc, groups[name], templates, groups))
        elif name in templates:
            if "vars" in table:
                raise loc.at("vars").error(f"vars is for step groups; {name!r} is a [[step-template]] (its call "
                                           "site sets fields such as id, device, args directly)")
            out.append(_merge_template(templates[name], dict(table), loc))
        else:
            known = sorted([*templates, *groups])
            raise loc.at("use").error(f"no [[step-template]] or [[step-group]] named {name!r}"
                                      f"{did_you_mean(name, known)}; defined: {', '.join(known) or 'none'}")
    return out


def _concrete(table: dict[str, Any], loc: Loc) -> RawStep:
    return RawStep(table, loc, {k: loc.child(k) for k in table})


def _merge_template(tpl: Definition, call: dict[str, Any], loc: Loc, via_group: str | None = None) -> RawStep:
    assert tpl.table is not None
    table = copy.deepcopy(tpl.table)
    locs: dict[str, Loc] = {k: tpl.loc.child(k) for k in table}
    for key in ("env", "captures"):
        if isinstance(table.get(key), Mapping):
            for sub in table[key]:
                locs[f"{key}.{sub}"] = tpl.loc.child(key, sub)
    for key, value in call.items():
        if key == "use":
            continue
        here = loc.child(key)
        if key in ("env", "captures") and isinstance(value, Mapping) and isinstance(table.get(key), Mapping):
            table[key] = {**table[key], **value}
            for sub in value:
                locs[f"{key}.{sub}"] = here.child(sub)
        elif key in ("args", "requires") and isinstance(value, list) and isinstance(table.get(key), list):
            table[key] = [*table[key], *value]
            locs[key] = here
        else:
            table[key] = value
            locs[key] = here
            if key in ("env", "captures") and isinstance(value, Mapping):
                for sub in value:
                    locs[f"{key}.{sub}"] = here.child(sub)
    via = f"template {tpl.name!r}" + (f" in group {via_group!r}" if via_group else "")
    return RawStep(table, loc, locs, via=via)


def _group_call(call: dict[str, Any], loc: Loc, group: Definition, templates: Mapping[str, Definition],
                groups: Mapping[str, Definition]) -> list[RawStep]:
    for key in call:
        if key not in ("use", "vars", "when"):
            raise loc.at(key).error(f"a call of step group {group.name!r} takes only vars (and when); {key!r} "
                                    "belongs in the group's steps (pass it through vars and ${group.KEY})")
    raw_vars = call.get("vars", {})
    if not isinstance(raw_vars, Mapping):
        raise loc.at("vars").error("expected a table: vars = { device = \"relay\" }")
    values: dict[str, str] = {}
    for key, value in raw_vars.items():
        text = scalar_text(value)
        if text is None:
            raise loc.at("vars", key).error(f"group variable {key!r} must be a string, got a table or array")
        values[key] = text
    when = call.get("when")
    if when is not None and not isinstance(when, (str, bool)):
        raise loc.at("when").error("expected \"true\" or \"false\" (usually ${matrix.*})")
    skip = _is_false(when)
    out = []
    for table, gloc in group.steps:
        table = _substitute_group(table, values, gloc, loc, group.name, ())
        if "use" in table:
            name = table["use"]
            if not isinstance(name, str):
                raise gloc.at("use").error("expected the name of a [[step-template]] (a string)")
            if name in groups:
                raise gloc.at("use").error(f"step group {group.name!r} uses step group {name!r}: groups cannot "
                                           "nest other groups (a group step may use a [[step-template]])")
            if name not in templates:
                raise gloc.at("use").error(f"no [[step-template]] named {name!r}"
                                           f"{did_you_mean(name, sorted(templates))}")
            raw = _merge_template(templates[name], table, gloc, via_group=group.name)
        else:
            raw = _concrete(table, gloc)
            raw.via = f"group {group.name!r}"
        raw.skip = skip
        out.append(raw)
    return out


def _substitute_group(value: Any, values: Mapping[str, str], gloc: Loc, call: Loc, group: str,
                      path: KeyPath) -> Any:
    if isinstance(value, str):
        if "${group." not in value:
            return value

        def missing(key: str) -> Exception:
            line = call.at().line
            where = f"{call.src.name}:{line}" if line else call.src.name
            given = ", ".join(sorted(values)) or "none"
            return gloc.at(*path).error(f"${{group.{key}}}: the call of group {group!r} at {where} gives no "
                                        f"{key!r} in vars (given: {given})")

        return substitute_prefixed(value, "group", values, missing)
    if isinstance(value, list):
        return [_substitute_group(v, values, gloc, call, group, (*path, i)) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: _substitute_group(v, values, gloc, call, group, (*path, k)) for k, v in value.items()}
    return value


# ---- counted devices ------------------------------------------------------------------------


def expand_counted(steps: list[Step], device_groups: Mapping[str, list[str]]) -> list[Step]:
    """N copies of every step on a counted device; wait-for, requires and asserts that name a
    counted base expand to every instance."""
    counts = {base: len(names) for base, names in device_groups.items()}
    if not counts:
        return steps
    # Ids of steps that will be copied count like device names (a spawn `fetch` on `fetcher`).
    bases = dict(counts)
    for step in steps:
        if step.device in counts and step.id and step.id not in bases:
            bases[step.id] = counts[step.device]
    out: list[Step] = []
    for step in steps:
        if step.device in counts:
            n = counts[step.device]
            for i in range(n):
                out.append(_instance(step, i, n, bases))
        elif step.action == "wait-for" and step.id in bases:
            out.extend(dataclasses.replace(step, id=f"{step.id}-{i}") for i in range(bases[step.id]))
        else:
            out.append(_fan_out(step, bases))
    for index, step in enumerate(out):
        step.index = index
    return out


def _instance(step: Step, i: int, n: int, bases: Mapping[str, int]) -> Step:
    def rw(text: str) -> str:
        return rewrite_counted(text, bases, i)

    def key(k: str) -> str:
        split = split_capture_key(k)
        if split is not None and split[0] in bases:
            return f"{split[0]}-{i % bases[split[0]]}.{split[1]}"
        return k

    results = None
    if step.results is not None:
        results = dataclasses.replace(step.results, **{f: key(k) for f, k in step.results.keys().items()})  # type: ignore[arg-type]
    return dataclasses.replace(
        step,
        device=f"{step.device}-{i}",
        id=f"{step.id}-{i}" if step.id else None,
        cmd=[rw(c) for c in step.cmd],
        env={k: rw(v) for k, v in step.env.items()},
        content=rw(step.content) if step.content is not None else None,
        san=[rw(s) for s in step.san],
        requires=[key(r) for r in step.requires],
        results=results,
        checks=[dataclasses.replace(c, lhs=key(c.lhs), rhs=rw(c.rhs)) for c in step.checks],
        captures=dict(step.captures),
    )


def _fan_out(step: Step, bases: Mapping[str, int]) -> Step:
    """A single step naming a counted base in requires or assert checks: one entry per instance."""
    requires: list[str] = []
    for r in step.requires:
        split = split_capture_key(r)
        if split is not None and split[0] in bases:
            requires.extend(f"{split[0]}-{i}.{split[1]}" for i in range(bases[split[0]]))
        else:
            requires.append(r)
    checks: list[Check] = []
    for c in step.checks:
        split = split_capture_key(c.lhs)
        if split is not None and split[0] in bases:
            for i in range(bases[split[0]]):
                lhs = f"{split[0]}-{i}.{split[1]}"
                checks.append(dataclasses.replace(c, lhs=lhs, text=c.text.replace(c.lhs, lhs, 1),
                                                  rhs=rewrite_counted(c.rhs, bases, i)))
        else:
            checks.append(c)
    return dataclasses.replace(step, requires=requires, checks=checks)
