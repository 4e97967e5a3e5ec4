"""Sim files -> `Sim` objects: TOML, [[extends]], [matrix], topology, binaries, steps.

Order (as the book has it): the file and the files it extends are read; the matrix is expanded
over the merged result (every `${matrix.*}` replaced per variant); then per variant the
topology is checked, templates and groups are expanded, steps are parsed, counted devices
expanded, and every reference is checked. Nothing here touches the kernel, and every mistake
is a SimError naming the file, the line and the key (wrapping a TopologyError when the
topology part is wrong).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SimError, TopologyError
from ..topofile import Topology, parse_topology
from . import matrix
from .expand import Definition, Loc, did_you_mean, expand_counted, expand_uses
from .model import BinarySpec, PrepareSpec, Sim, Step, Where, sim_error
from .source import KeyPath, SourceFile, display_name, find_file, parse_source, read_source
from .stepspec import parse_step
from .validate import check_steps, referenced_binaries

SIM_KEYS = ("extends", "matrix", "sim", "binary", "prepare", "step-template", "step-group", "step")
TOPOLOGY_KEYS = ("router", "device", "region")
EXTENDS_KEYS = ("extends", "sim", "binary", "prepare", "step-template", "step-group")
SIM_TABLE_KEYS = ("name", "topology")
BINARY_KEYS = ("name", "mode", "path", "url", "repo", "commit", "example", "bin", "features", "all-features")
BINARY_MODES = ("path", "fetch", "build", "target")
PREPARE_KEYS = ("mode", "examples", "bins", "features", "all-features")


@dataclass
class _Shared:
    """What one file (the sim or one it extends) contributes, before matrix substitution."""

    src: SourceFile
    templates: list[tuple[dict[str, Any], KeyPath]] = field(default_factory=list)
    groups: list[tuple[dict[str, Any], KeyPath]] = field(default_factory=list)
    binaries: list[tuple[dict[str, Any], KeyPath]] = field(default_factory=list)
    prepare: list[tuple[dict[str, Any], KeyPath]] = field(default_factory=list)
    topology: str | None = None
    topology_path: KeyPath = ("sim", "topology")


def load_sims(path: str | os.PathLike[str]) -> list[Sim]:
    """Every sim of a file (one per matrix variant)."""
    p = Path(path).resolve()
    return _not_too_deep(p, lambda: load_source(read_source(p)))


def load_sim_text(text: str, path: str | os.PathLike[str]) -> list[Sim]:
    """The sims of `text`, as if it were the file `path` (extends and topos/ are looked up next to it)."""
    p = Path(path).resolve()
    return _not_too_deep(p, lambda: load_source(parse_source(text, p, display_name(p))))


def _not_too_deep(path: Path, load: Callable[[], list[Sim]]) -> list[Sim]:
    try:
        return load()
    except RecursionError:
        raise sim_error("arrays or tables are nested too deeply (hundreds of levels); a sim needs a few",
                        file=display_name(path)) from None


def load_source(src: SourceFile) -> list[Sim]:
    doc = src.doc
    for key in doc:
        if key not in SIM_KEYS and key not in TOPOLOGY_KEYS:
            raise src.at((key,)).error(f"unknown top-level key {key!r}{did_you_mean(key, [*SIM_KEYS, *TOPOLOGY_KEYS])}"
                                       f"; a sim file has {', '.join(SIM_KEYS)} and inline topology tables "
                                       f"({', '.join(TOPOLOGY_KEYS)})")
    shared = _read_extends(src, [src.path])
    main = _contributions(src, is_main=True)
    variants = matrix.variants(doc.get("matrix"), src.at)
    sims = [_variant(src, main, shared, v, "matrix" in doc) for v in variants]
    names = [s.name for s in sims]
    if len(set(names)) != len(names):
        # A name without ${matrix.*}: tell the variants apart by their axis values.
        for sim, v in zip(sims, variants, strict=True):
            sim.name = "-".join([sim.name, *v.axes.values()])
    return sims


# ---- extends --------------------------------------------------------------------------------


def _read_extends(src: SourceFile, chain: list[Path]) -> list[_Shared]:
    raw = src.doc.get("extends", [])
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list):
        raise src.at(("extends",)).error("expected [[extends]] tables with file = \"...\"")
    out: list[_Shared] = []
    for i, entry in enumerate(raw):
        path: KeyPath = ("extends", i)
        if not isinstance(entry, Mapping):
            raise src.at(path).error("expected an [[extends]] table with file = \"...\"")
        for key in entry:
            if key != "file":
                raise src.at((*path, key)).error(f"unknown key {key!r} in [[extends]]; it takes only file")
        name = entry.get("file")
        if not isinstance(name, str) or not name:
            raise src.at((*path, "file") if "file" in entry else path).error(
                "[[extends]] needs file = \"defaults.toml\" (a path: next to the sim file, one directory up, "
                "or in the working directory)")
        here = src.path.parent
        found = find_file(name, [here / name, here.parent / name, Path.cwd() / name], "extends file",
                          src.at((*path, "file")))
        if found in chain:
            cycle = " -> ".join(display_name(p) for p in [*chain, found])
            raise src.at((*path, "file")).error(f"extends files form a cycle: {cycle}")
        ext = read_source(found, "extends file", src.at((*path, "file")))
        for key in ext.doc:
            if key not in EXTENDS_KEYS:
                raise ext.at((key,)).error(f"an extends file contributes {', '.join(EXTENDS_KEYS[1:])}; "
                                           f"{key!r} belongs in the sim file")
        out.extend(_read_extends(ext, [*chain, found]))  # what it extends comes first: it wins less
        out.append(_contributions(ext, is_main=False))
    return out


def _tables(src: SourceFile, key: str, what: str, allow_single: bool = False) -> list[tuple[dict[str, Any], KeyPath]]:
    raw = src.doc.get(key, [])
    if allow_single and isinstance(raw, Mapping):
        return [(dict(raw), (key,))]
    if not isinstance(raw, list):
        raise src.at((key,)).error(f"expected [[{key}]] tables ({what})")
    out: list[tuple[dict[str, Any], KeyPath]] = []
    for i, table in enumerate(raw):
        if not isinstance(table, Mapping):
            raise src.at((key, i)).error(f"expected a [[{key}]] table ({what})")
        out.append((dict(table), (key, i)))
    return out


def _contributions(src: SourceFile, is_main: bool) -> _Shared:
    shared = _Shared(src)
    shared.templates = _tables(src, "step-template", "name = \"...\" and step fields")
    shared.groups = _tables(src, "step-group", "name = \"...\" and [[step-group.step]] tables")
    shared.binaries = _tables(src, "binary", "name = \"...\" and path, url or repo")
    shared.prepare = _tables(src, "prepare", "examples = [...] and/or bins = [...]", allow_single=True)
    sim = src.doc.get("sim")
    if sim is not None:
        if not isinstance(sim, Mapping):
            raise src.at(("sim",)).error("expected a [sim] table with name = \"...\" and topology = \"...\"")
        allowed = SIM_TABLE_KEYS if is_main else ("topology",)
        for key in sim:
            if key not in SIM_TABLE_KEYS:
                hint = did_you_mean(key, list(SIM_TABLE_KEYS))
                raise src.at(("sim", key)).error(f"unknown key {key!r} in [sim]{hint}; valid keys: "
                                                 f"{', '.join(SIM_TABLE_KEYS)}")
            if key not in allowed:
                raise src.at(("sim", key)).error(f"[sim] {key} belongs in the sim file, not in a file it extends")
        if "topology" in sim:
            shared.topology = sim["topology"]  # checked per variant (it may hold ${matrix.*})
    return shared


# ---- one variant ----------------------------------------------------------------------------


class _Variant:
    def __init__(self, src: SourceFile, v: matrix.Variant, defined: bool) -> None:
        self.src = src
        self.v = v
        self.defined = defined

    def sub(self, src: SourceFile, value: Any, path: KeyPath) -> Any:
        return matrix.substitute(value, self.v.values, src.at, path, self.defined)


def _variant(src: SourceFile, main: _Shared, shared: list[_Shared], v: matrix.Variant, defined: bool) -> Sim:
    var = _Variant(src, v, defined)
    doc = {k: (val if k == "matrix" else var.sub(src, val, (k,))) for k, val in src.doc.items()}
    sim_table = doc.get("sim", {})
    name = sim_table.get("name", src.path.stem) if isinstance(sim_table, Mapping) else src.path.stem
    if not isinstance(name, str) or not name.strip():
        raise src.at(("sim", "name")).error("expected a non-empty string: the sim's name (used in output paths)")
    files = [*shared, main]

    templates: dict[str, Definition] = {}
    groups: dict[str, Definition] = {}
    binaries: dict[str, BinarySpec] = {}
    prepare: list[PrepareSpec] = []
    for contrib in files:
        s = contrib.src
        is_main = contrib is main
        own_t: dict[str, Definition] = {}
        for table, path in contrib.templates:
            d = _template(s, var.sub(s, table, path), path)
            _unique(own_t, d, "step-template")
            if is_main or d.name not in templates:  # the sim's own win; among extends, the first
                templates[d.name] = d
        own_g: dict[str, Definition] = {}
        for table, path in contrib.groups:
            d = _group(s, var.sub(s, table, path), path)
            _unique(own_g, d, "step-group")
            if is_main or d.name not in groups:
                groups[d.name] = d
        own_b: dict[str, BinarySpec] = {}
        for table, path in contrib.binaries:
            b = _binary(s, var.sub(s, table, path), path)
            if b.name in own_b:
                raise b.where.error(f"binary {b.name!r} is declared twice in this file")
            own_b[b.name] = b
            binaries[b.name] = b  # later files (the sim last) win
        for table, path in contrib.prepare:
            prepare.append(_prepare(s, var.sub(s, table, path), path))

    topo, ref, topo_file = _topology(src, doc, files, var)

    entries = doc.get("step", [])
    if not isinstance(entries, list):
        raise src.at(("step",)).error("expected [[step]] tables")
    raw_steps = expand_uses([(e, Loc(src, ("step", i))) for i, e in enumerate(entries)], templates, groups)
    steps: list[Step] = [parse_step(raw, i) for i, raw in enumerate(raw_steps)]
    counted: dict[str, list[str]] = dict(topo.device_groups)
    for step in steps:
        if step.device in topo.device_groups and step.id and step.id not in counted:
            counted[step.id] = [f"{step.id}-{i}" for i in range(len(topo.device_groups[step.device]))]
    steps = expand_counted(steps, topo.device_groups)
    check_steps(steps, topo, binaries, counted)
    used = referenced_binaries(steps)
    sim_where = src.at(("sim",)) if "sim" in doc else src.at(())
    return Sim(name=name.strip(), file=src.path, where=sim_where, topology=topo, topology_ref=ref,
               topology_file=topo_file, steps=steps, binaries={n: b for n, b in binaries.items() if n in used},
               prepare=prepare, variant=dict(v.values), raw_steps=len(entries))


def _unique(seen: dict[str, Definition], d: Definition, kind: str) -> None:
    if d.name in seen:
        line = seen[d.name].loc.at().line
        raise d.loc.at().error(f"[[{kind}]] {d.name!r} is defined twice in this file (also at line {line})")
    seen[d.name] = d


def _name(src: SourceFile, table: Mapping[str, Any], path: KeyPath, kind: str) -> str:
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise src.at((*path, "name") if "name" in table else path).error(f"a [[{kind}]] needs name = \"...\"")
    return name


def _template(src: SourceFile, table: dict[str, Any], path: KeyPath) -> Definition:
    name = _name(src, table, path, "step-template")
    if "use" in table:
        raise src.at((*path, "use")).error("a step template cannot use another template or group")
    if "vars" in table:
        raise src.at((*path, "vars")).error("vars belongs to a step that uses a [[step-group]]")
    fields = {k: v for k, v in table.items() if k != "name"}
    return Definition(name, Loc(src, path), table=fields)


def _group(src: SourceFile, table: dict[str, Any], path: KeyPath) -> Definition:
    name = _name(src, table, path, "step-group")
    for key in table:
        if key not in ("name", "step"):
            raise src.at((*path, key)).error(f"unknown key {key!r} in [[step-group]]; it has name and "
                                             "[[step-group.step]] tables")
    steps = table.get("step", [])
    if not isinstance(steps, list) or not steps:
        raise src.at((*path, "step") if "step" in table else path).error(
            f"step group {name!r} has no steps; add [[step-group.step]] tables")
    out = []
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            raise src.at((*path, "step", i)).error("expected a [[step-group.step]] table")
        out.append((dict(step), Loc(src, (*path, "step", i))))
    return Definition(name, Loc(src, path), steps=out)


def _strings(src: SourceFile, value: object, path: KeyPath, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise src.at(path).error(f"expected an array of strings ({what})")
    return tuple(value)


def _binary(src: SourceFile, table: Mapping[str, Any], path: KeyPath) -> BinarySpec:
    where = src.at(path)
    for key in table:
        if key not in BINARY_KEYS:
            raise src.at((*path, key)).error(f"unknown key {key!r} in [[binary]]{did_you_mean(key, list(BINARY_KEYS))};"
                                             f" valid keys: {', '.join(BINARY_KEYS)}")
    for key in ("name", "mode", "path", "url", "repo", "commit", "example", "bin"):
        if key in table and (not isinstance(table[key], str) or not table[key].strip()):
            raise src.at((*path, key)).error(f"expected a non-empty string for {key}")
    name = _name(src, table, path, "binary")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise src.at((*path, "name")).error(f"binary name {name!r}: use letters, digits, '-', '_' and '.' "
                                            "(it is referenced as ${binary.NAME})")
    sources = [k for k in ("path", "url", "repo") if k in table]
    if len(sources) > 1:
        raise src.at((*path, sources[1])).error(f"binary {name!r} gives {' and '.join(sources)}; give exactly one "
                                                "source")
    if "example" in table and "bin" in table:
        raise src.at((*path, "bin")).error(f"binary {name!r} gives example and bin; give one")
    if "mode" in table:
        mode = table["mode"]
        if mode not in BINARY_MODES:
            raise src.at((*path, "mode")).error(f"unknown mode {mode!r}{did_you_mean(mode, list(BINARY_MODES))}; "
                                                f"modes: {', '.join(BINARY_MODES)}")
    elif "path" in table:
        mode = "path"
    elif "url" in table:
        mode = "fetch"
    elif sources or "example" in table or "bin" in table:
        mode = "build"
    else:
        raise where.error(f"binary {name!r} needs a source: path = \"...\", url = \"...\", repo = \"...\" with "
                          "example or bin, or mode = \"target\" with example or bin")
    needs = {"path": ("path",), "fetch": ("url",)}
    for key in needs.get(mode, ()):
        if key not in table:
            raise where.error(f"binary {name!r} has mode = \"{mode}\" but no {key}")
    if mode in ("path", "fetch", "target") and "repo" in table:
        raise src.at((*path, "repo")).error(f"repo needs mode = \"build\" (binary {name!r} has mode = \"{mode}\")")
    if mode == "fetch" and "path" in table:
        raise src.at((*path, "path")).error(f"binary {name!r}: mode = \"fetch\" downloads url; drop path")
    if mode == "target" and "example" not in table and "bin" not in table:
        raise where.error(f"binary {name!r} has mode = \"target\": name the artifact with example or bin")
    if "repo" in table and "example" not in table and "bin" not in table:
        raise src.at((*path, "repo")).error(f"binary {name!r}: repo must pair with example or bin")
    features: tuple[str, ...] = ()
    if "features" in table:
        features = _strings(src, table["features"], (*path, "features"), "cargo features")
    all_features = table.get("all-features", False)
    if not isinstance(all_features, bool):
        raise src.at((*path, "all-features")).error("expected true or false")
    return BinarySpec(name=name, mode=mode, where=where, base_dir=src.path.parent, path=table.get("path"),
                      url=table.get("url"), repo=table.get("repo"), commit=table.get("commit", "main"),
                      example=table.get("example"), bin=table.get("bin"), features=features,
                      all_features=all_features)


def _prepare(src: SourceFile, table: Mapping[str, Any], path: KeyPath) -> PrepareSpec:
    for key in table:
        if key not in PREPARE_KEYS:
            hint = did_you_mean(key, list(PREPARE_KEYS))
            raise src.at((*path, key)).error(f"unknown key {key!r} in [[prepare]]{hint}; valid keys: "
                                             f"{', '.join(PREPARE_KEYS)}")
    if table.get("mode", "build") != "build":
        raise src.at((*path, "mode")).error(f"[[prepare]] mode is \"build\" (the only one), not {table['mode']!r}")
    spec = PrepareSpec(where=src.at(path))
    for key in ("examples", "bins", "features"):
        if key in table:
            setattr(spec, key, _strings(src, table[key], (*path, key), f"{key} to build"))
    all_features = table.get("all-features", False)
    if not isinstance(all_features, bool):
        raise src.at((*path, "all-features")).error("expected true or false")
    spec.all_features = all_features
    if not spec.examples and not spec.bins:
        raise spec.where.error("[[prepare]] builds nothing: give examples = [...] and/or bins = [...]")
    return spec


# ---- topology -------------------------------------------------------------------------------


def _topology(src: SourceFile, doc: Mapping[str, Any], files: list[_Shared],
              var: _Variant) -> tuple[Topology, str | None, Path | None]:
    sim = doc.get("sim", {})
    inline = [k for k in TOPOLOGY_KEYS if k in doc]
    ref = sim.get("topology") if isinstance(sim, Mapping) else None
    ref_src: SourceFile = src
    ref_path: KeyPath = ("sim", "topology")
    if ref is None and not inline:
        for contrib in reversed(files[:-1]):  # the last extends file that names one
            if contrib.topology is not None:
                ref = var.sub(contrib.src, contrib.topology, contrib.topology_path)
                ref_src, ref_path = contrib.src, contrib.topology_path
                break
    if ref is not None:
        where = ref_src.at(ref_path)
        if not isinstance(ref, str) or not ref.strip():
            raise where.error("expected the name of a topology file in topos/ (a string such as \"1to1-public\")")
        if inline:
            raise src.at((inline[0],)).error(f"the sim names topology {ref!r} and also has inline [{inline[0]}] "
                                             "tables; use one of them")
        path = _find_topology(ref, ref_src.path.parent, where)
        topo_src = read_source(path, "topology file", where)
        topo_doc = var.sub(topo_src, topo_src.doc, ())
        return _parse_topology(topo_doc, topo_src), ref, path
    if not inline:
        raise src.at(("sim",) if "sim" in doc else ()).error(
            "the sim has no topology: set topology = \"NAME\" in [sim] (the file topos/NAME.toml) or add inline "
            "[[router]] and [device.NAME.eth0] tables")
    return _parse_topology(doc, src, other_keys=SIM_KEYS), None, None


def _find_topology(ref: str, here: Path, where: Where) -> Path:
    name = ref.strip()
    if name.endswith(".toml"):
        candidates = [here / name, Path.cwd() / name]
    else:
        candidates = [here / "topos" / f"{name}.toml", here.parent / "topos" / f"{name}.toml",
                      Path.cwd() / "topos" / f"{name}.toml"]
    return find_file(name, candidates, "topology", where)


def _parse_topology(doc: Mapping[str, Any], src: SourceFile, other_keys: tuple[str, ...] = ()) -> Topology:
    try:
        return parse_topology(doc, source=src.name, text=src.text, other_keys=other_keys)
    except TopologyError as exc:
        raise wrap_topology_error(exc, src.name) from exc


def wrap_topology_error(exc: TopologyError, file: str | None = None) -> SimError:
    """A topology mistake as a SimError: the same file, line and key; the TopologyError is its cause."""
    message = exc.message
    if exc.node is not None:
        message = f"{exc.node}{'.' + exc.field if exc.field else ''}: {message}"
    return sim_error(f"topology: {message}", file=exc.file or file, line=exc.line, key=exc.key)

