"""Checks of a whole step list before anything runs: every device, interface, step id, capture,
binary and NETSIM variable a step names must exist (and captures must come from earlier steps)."""

from __future__ import annotations

from collections.abc import Mapping

from ..topofile import Topology
from .expand import did_you_mean
from .interpolate import env_key, references, split_capture_key
from .model import BinarySpec, Step, Where

GEN_CAPTURES = {"gen-certs": ("cert_pem_path", "key_pem_path"), "gen-file": ("path",)}


def produced_captures(step: Step) -> tuple[str, ...]:
    if step.action in GEN_CAPTURES:
        return GEN_CAPTURES[step.action]
    return tuple(step.captures)


def step_strings(step: Step) -> list[tuple[str, Where]]:
    """The strings of a step that are interpolated at run time, with where they were written."""
    out = [(c, step.at("args" if i >= len(step.cmd) else "cmd")) for i, c in enumerate(step.cmd)]
    out += [(v, step.at("env")) for v in step.env.values()]
    out += [(s, step.at("san")) for s in step.san]
    if step.content is not None:
        out.append((step.content, step.at("content")))
    out += [(c.rhs, c.where.for_step(step.name)) for c in step.checks]
    return out


class _Checker:
    def __init__(self, steps: list[Step], topo: Topology, binaries: Mapping[str, BinarySpec],
                 counted: Mapping[str, list[str]]) -> None:
        self.steps = steps
        self.topo = topo
        self.binaries = binaries
        self.counted = counted  # counted base names (devices and ids of copied steps) -> instances
        self.devices = {d.name: d for d in topo.devices}
        self.routers = {r.name for r in topo.routers}
        self.env_names = {env_key(n): n for n in [*self.devices, *self.routers]}
        self.first_index: dict[str, int] = {}
        for s in steps:
            if s.id and not s.skip:
                self.first_index.setdefault(s.id, s.index)
        self.all_ids = {s.id: s for s in steps if s.id}

    def run(self) -> None:
        spawned: dict[str, Step] = {}
        for step in self.steps:
            if step.skip:
                continue
            self.device(step)
            for text, where in step_strings(step):
                self.strings(step, text, where)
            for i, key in enumerate(step.requires):
                self.capture(step, key, step.at("requires"), f"requires[{i}]")
            for check in step.checks:
                self.capture(step, check.lhs, check.where.for_step(step.name), "the assertion")
            if step.results is not None:
                for field, key in step.results.keys().items():
                    self.capture(step, key, step.at("results"), f"results.{field}", own=True)
            if step.action == "spawn" and step.id:
                if step.id in spawned:
                    other = spawned[step.id].where
                    raise step.at("id").error(f"a spawn step with id {step.id!r} is already running (spawned at "
                                              f"line {other.line}); give each spawn its own id")
                spawned[step.id] = step
            if step.action == "wait-for":
                self.wait_for(step)

    def device(self, step: Step) -> None:
        if step.device is None:
            return
        name = step.device
        allowed = [*self.devices, *self.routers] if step.action in ("run", "spawn") else list(self.devices)
        if name not in allowed:
            kinds = "devices and routers" if step.action in ("run", "spawn") else "devices"
            if name in self.routers:
                raise step.at("device").error(f"{name!r} is a router; {step.action} works on devices")
            raise step.at("device").error(f"unknown device {name!r}{did_you_mean(name, allowed)}; {kinds} in the "
                                          f"topology: {', '.join(sorted(allowed)) or 'none'}")
        dev = self.devices.get(name)
        ifaces = [i.name for i in dev.ifaces] if dev else []
        for key, iface in (("interface", step.interface), ("to", step.to)):
            if iface is not None and dev is not None and iface not in ifaces:
                raise step.at(key).error(f"device {name!r} has no interface {iface!r}{did_you_mean(iface, ifaces)};"
                                         f" its interfaces: {', '.join(ifaces)}")

    def strings(self, step: Step, text: str, where: Where) -> None:
        try:
            refs = references(text)
        except ValueError as exc:
            raise where.error(f"{text!r}: {exc}") from None
        for name in refs.binaries:
            if name not in self.binaries:
                known = sorted(self.binaries)
                raise where.error(f"unknown binary ${{binary.{name}}}{did_you_mean(name, known)}; declare it with "
                                  f"[[binary]] name = \"{name}\" (declared: {', '.join(known) or 'none'})")
        for var in refs.vars:
            upper = var.upper()
            prefix = next((p for p in ("NETSIM_IP_", "NETSIM_IP6_") if upper.startswith(p)), None)
            if prefix is None:
                raise where.error(f"unknown variable ${var}: sims know $NETSIM_IP_<DEVICE> and $NETSIM_IP6_<DEVICE>")
            node = upper[len(prefix):]
            if node not in self.env_names:
                counted = [b for b in self.counted if env_key(b) == node]
                if counted:
                    raise where.error(f"${var}: {counted[0]!r} is counted ({self._instances(counted[0])}); name one "
                                      f"instance, such as $NETSIM_IP_{env_key(counted[0])}_0")
                known = sorted(f"NETSIM_IP_{k}" for k in self.env_names)
                raise where.error(f"${var}: no device or router named like {node.lower()!r}"
                                  f"{did_you_mean('NETSIM_IP_' + node, known)} (the name upper-cased, other "
                                  "characters than letters and digits as _)")
        for key in refs.unknown:
            if key.startswith("group."):
                raise where.error(f"${{{key}}} is only replaced inside the steps of a [[step-group]]")
            raise where.error(f"${{{key}}} is not a binary (${{binary.NAME}}), a capture (${{STEP_ID.CAPTURE}}) "
                              "or a NETSIM variable")
        for key in refs.captures:
            self.capture(step, key, where, "${" + key + "}")

    def _instances(self, base: str) -> str:
        names = self.counted.get(base) or []
        return f"{names[0]}..{names[-1]}" if names else base

    def capture(self, step: Step, key: str, where: Where, what: str, own: bool = False) -> None:
        split = split_capture_key(key)
        if split is None:
            raise where.error(f"{what}: {key!r} is not a capture key STEP_ID.CAPTURE")
        sid, name = split
        producer = self.all_ids.get(sid)
        if producer is None:
            if sid in self.counted:
                raise where.error(f"{what}: {sid!r} is counted ({self._instances(sid)}); name one instance, such as "
                                  f"{sid}-0.{name}")
            ids = sorted(self.first_index)
            raise where.error(f"{what}: no step has id {sid!r}{did_you_mean(sid, ids)}, so capture {key!r} is never "
                              f"produced (step ids: {', '.join(ids) or 'none'})")
        first = self.first_index.get(sid)
        if first is None:
            raise where.error(f"{what}: step {sid!r} is skipped in this variant (when = \"false\"), so {key!r} is "
                              "never produced")
        if first > step.index or (first == step.index and not own):
            raise where.error(f"{what}: step {sid!r} comes after this one; captures can only be used by later steps")
        producers = [s for s in self.steps if s.id == sid and not s.skip and s.index <= step.index]
        names = sorted({n for s in producers for n in produced_captures(s)})
        if name not in names:
            raise where.error(f"{what}: step {sid!r} has no capture {name!r}{did_you_mean(name, names)} (its "
                              f"captures: {', '.join(names) or 'none'})")

    def wait_for(self, step: Step) -> None:
        assert step.id is not None
        earlier = [s for s in self.steps[:step.index] if s.id == step.id and not s.skip]
        if not earlier:
            ids = sorted({s.id for s in self.steps[:step.index] if s.action == "spawn" and s.id and not s.skip})
            raise step.at("id").error(f"wait-for {step.id!r}: no earlier spawn step has that id"
                                      f"{did_you_mean(step.id, ids)} (spawned: {', '.join(ids) or 'none'})")


def check_steps(steps: list[Step], topo: Topology, binaries: Mapping[str, BinarySpec],
                counted: Mapping[str, list[str]]) -> None:
    _Checker(steps, topo, binaries, counted).run()


def referenced_binaries(steps: list[Step]) -> set[str]:
    names: set[str] = set()
    for step in steps:
        if step.skip:
            continue
        for text, _where in step_strings(step):
            try:
                names.update(references(text).binaries)
            except ValueError:
                continue
    return names
