"""One step table -> a `Step`: its action, the keys that action takes, their values checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import TopologyError
from ..link import LinkCondition
from ..topofile import describe_value
from .assertions import compile_regex, parse_check
from .durations import parse_duration
from .expand import RawStep, did_you_mean
from .model import ACTION_ALIASES, ACTIONS, PARSERS, RESULT_FIELDS, CaptureSpec, ResultsSpec, Step, Where

COMMON_KEYS = ("action", "kind", "id", "requires", "when", "timeout")
DEVICE_ACTIONS = ("run", "spawn", "set-link-condition", "link-down", "link-up", "set-default-route", "gen-certs",
                  "gen-file")
ACTION_KEYS: dict[str, tuple[str, ...]] = {
    "run": ("cmd", "args", "env", "parser", "captures", "results"),
    "spawn": ("cmd", "args", "env", "parser", "captures", "results", "ready_after"),
    "wait-for": (),
    "wait": ("duration",),
    "set-link-condition": ("interface", "condition", "impair", "direction"),
    "link-down": ("interface",),
    "link-up": ("interface",),
    "set-default-route": ("to",),
    "gen-certs": ("cn", "san"),
    "gen-file": ("content",),
    "assert": ("check", "checks"),
}
REQUIRED: dict[str, tuple[str, ...]] = {
    "run": ("device", "cmd"),
    "spawn": ("id", "device", "cmd"),
    "wait-for": ("id",),
    "wait": ("duration",),
    "set-link-condition": ("device",),
    "link-down": ("device",),
    "link-up": ("device",),
    "set-default-route": ("device", "to"),
    "gen-certs": ("id",),
    "gen-file": ("id", "content"),
    "assert": (),
}
CAPTURE_KEYS = ("pipe", "regex", "match", "pick")
DIRECTIONS = ("up", "down", "both")


def allowed_keys(action: str) -> tuple[str, ...]:
    device = ("device",) if action in DEVICE_ACTIONS else ()
    return (*COMMON_KEYS, *device, *ACTION_KEYS[action])


class _Fields:
    """Typed reads of one raw step, each failure at the key's own line."""

    def __init__(self, raw: RawStep, name: str) -> None:
        self.raw = raw
        self.t = raw.table
        self.name = name

    def at(self, key: str, *sub: str | int) -> Where:
        if not sub:
            return self.raw.loc_of(key).at(step=self.name)
        first, *rest = sub
        if isinstance(first, str):
            return self.raw.loc_of(key, first).at(*rest, step=self.name)
        return self.raw.loc_of(key).at(*sub, step=self.name)

    def fail(self, key: str, message: str, *sub: str | int) -> Exception:
        return self.at(key, *sub).error(message)

    def string(self, key: str, what: str) -> str:
        value = self.t[key]
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string ({what}), got {describe_value(value)}")
        return value

    def opt_string(self, key: str, what: str) -> str | None:
        return self.string(key, what) if key in self.t else None

    def strings(self, key: str, what: str, allow_numbers: bool = False) -> list[str]:
        value = self.t[key]
        if not isinstance(value, list):
            raise self.fail(key, f"expected an array of strings ({what}), got {describe_value(value)}")
        out = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            elif allow_numbers and isinstance(item, (int, float)) and not isinstance(item, bool):
                out.append(str(item))
            else:
                raise self.fail(key, f"expected a string ({what}), got {describe_value(item)}", i)
        return out

    def table(self, key: str, what: str) -> Mapping[str, Any]:
        value = self.t[key]
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a table ({what}), got {describe_value(value)}")
        return value

    def duration(self, key: str) -> float:
        return parse_duration(self.t[key], self.at(key))


def step_action(raw: RawStep, name: str | None = None) -> str:
    t = raw.table
    key = "action" if "action" in t else "kind" if "kind" in t else None
    if key is None:
        if "cmd" in t:
            return "run"  # the book: action defaults to "run" when cmd is present
        raise raw.loc.at(step=name).error(f"a step needs action = \"...\" (one of: {', '.join(ACTIONS)}), or cmd "
                                          "for a run step")
    value = t[key]
    if not isinstance(value, str):
        raise raw.loc_of(key).at(step=name).error(f"expected an action name (a string), got {describe_value(value)}")
    action = ACTION_ALIASES.get(value, value)
    if action not in ACTIONS:
        raise raw.loc_of(key).at(step=name).error(
            f"unknown action {value!r}{did_you_mean(value, list(ACTIONS))}; actions: {', '.join(ACTIONS)} "
            "(aliases: set-impair, switch-route)")
    return action


def parse_step(raw: RawStep, index: int) -> Step:
    t = raw.table
    sid = t.get("id")
    if sid is not None and (not isinstance(sid, str) or not sid.strip() or any(c.isspace() for c in sid)):
        raise raw.loc_of("id").at(step=f"#{index + 1}").error("expected a step id: a non-empty string without spaces")
    action = step_action(raw, sid or f"#{index + 1}")
    name = sid if sid else f"#{index + 1} {action}"
    f = _Fields(raw, name)
    valid = allowed_keys(action)
    for key in t:
        if key not in valid:
            if key == "device":
                raise f.fail(key, f"{action} steps take no device")
            via = f" (from {raw.via})" if raw.via else ""
            raise f.fail(key, f"unknown key {key!r} in {_a(action)} step{via}{did_you_mean(key, list(valid))}; "
                              f"valid keys: {', '.join(valid)}")
    if "action" in t and "kind" in t:
        raise f.fail("kind", "give either action or kind (its alias), not both")
    for key in REQUIRED[action]:
        if key not in t:
            raise raw.loc.at(step=name).error(f"{_a(action)} step needs {key}" + _hint(action, key))
    keys = {k: f.at(k) for k in t}
    step = Step(index=index, action=action, where=raw.loc.at(step=name), keys=keys, id=sid)
    step.skip = raw.skip
    if "when" in t:
        when = t["when"]
        if not isinstance(when, (str, bool)):
            raise f.fail("when", f"expected \"true\" or \"false\" (usually ${{matrix.*}}), got {describe_value(when)}")
        if when is False or (isinstance(when, str) and when.strip().lower() == "false"):
            step.skip = True
    if "device" in t:
        step.device = f.string("device", "the name of a device")
    if "requires" in t:
        step.requires = f.strings("requires", "capture keys STEP_ID.CAPTURE")
        for i, key in enumerate(step.requires):
            if "." not in key.strip(".") or any(c.isspace() for c in key):
                raise f.fail("requires", f"{key!r} is not a capture key STEP_ID.CAPTURE", i)
    if "timeout" in t:
        step.timeout = f.duration("timeout")
    _ACTION_PARSERS[action](f, step)
    return step


def _a(action: str) -> str:
    return f"an {action}" if action[0] in "aeiou" else f"a {action}"


def _hint(action: str, key: str) -> str:
    hints = {
        ("spawn", "id"): ": later steps wait for it with wait-for id = ...",
        ("wait-for", "id"): ": the id of the spawn step to wait for",
        ("gen-certs", "id"): ": its captures are ID.cert_pem_path and ID.key_pem_path",
        ("gen-file", "id"): ": its capture is ID.path",
        ("wait", "duration"): " such as \"500ms\", \"30s\" or \"2m\"",
        ("set-default-route", "to"): ": the interface to route through",
    }
    return hints.get((action, key), "")


# ---- per action -----------------------------------------------------------------------------


def _process(f: _Fields, step: Step) -> None:
    t = f.t
    step.cmd = f.strings("cmd", "the command and its arguments", allow_numbers=True)
    if not step.cmd:
        raise f.fail("cmd", "the command is empty; give at least the program: cmd = [\"iperf3\", \"-s\"]")
    if "args" in t:
        step.cmd += f.strings("args", "arguments appended to cmd", allow_numbers=True)
    if "env" in t:
        env = f.table("env", "environment variables: { NAME = \"value\" }")
        for key, value in env.items():
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise f.fail("env", f"environment variable {key!r} must be a string, got {describe_value(value)}", key)
            step.env[key] = str(value)
    if "parser" in t:
        parser = f.string("parser", "an output parser")
        if parser not in PARSERS:
            raise f.fail("parser", f"unknown parser {parser!r}{did_you_mean(parser, list(PARSERS))}; parsers: "
                                   f"{', '.join(PARSERS)}")
        step.parser = parser
    if "captures" in t:
        for cname, spec in f.table("captures", "[step.captures.NAME] tables").items():
            step.captures[cname] = _capture(f, step, cname, spec)
    if "results" in t:
        step.results = _results(f, step)
    if "ready_after" in t:
        step.ready_after = f.duration("ready_after")


def _capture(f: _Fields, step: Step, name: str, spec: object) -> CaptureSpec:
    where = f.at("captures", name)
    if not name or "." in name or any(c.isspace() for c in name):
        raise where.error(f"capture name {name!r} must be non-empty, without dots or spaces")
    if not isinstance(spec, Mapping):
        raise where.error(f"expected a table: [step.captures.{name}] with regex = \"...\" or pick = \".path\"")
    for key in spec:
        if key not in CAPTURE_KEYS:
            raise f.fail("captures", f"unknown key {key!r} in capture {name!r}{did_you_mean(key, list(CAPTURE_KEYS))}"
                                     f"; valid keys: {', '.join(CAPTURE_KEYS)}", name, key)
    capture = CaptureSpec(name=name, where=where)
    if "pipe" in spec:
        pipe = spec["pipe"]
        if pipe not in ("stdout", "stderr"):
            raise f.fail("captures", f"pipe is \"stdout\" or \"stderr\", not {pipe!r}", name, "pipe")
        capture.pipe = pipe
    if "regex" in spec:
        regex = spec["regex"]
        if not isinstance(regex, str):
            raise f.fail("captures", f"expected a regular expression (a string), got {describe_value(regex)}",
                         name, "regex")
        capture.regex = compile_regex(regex, f.at("captures", name, "regex"))
    if "pick" in spec:
        pick = spec["pick"]
        if not isinstance(pick, str) or not pick.strip():
            raise f.fail("captures", "expected a dot path into the JSON value, such as \".end.sum_received.bytes\"",
                         name, "pick")
        capture.pick = pick.strip()
    if "match" in spec:
        match = spec["match"]
        if not isinstance(match, Mapping):
            raise f.fail("captures", "expected a table of key = value guards: match = { kind = \"Ready\" }",
                         name, "match")
        for key, value in match.items():
            if isinstance(value, (Mapping, list)):
                raise f.fail("captures", f"match guard {key!r} must be a plain value, not a table or array",
                             name, "match", key)
            capture.match[key] = value if isinstance(value, str) else _json_text(value)
        if capture.pick is None:
            raise f.fail("captures", "match needs pick: the value to take from the matching JSON object",
                         name, "match")
    if capture.regex is None and capture.pick is None:
        raise where.error(f"capture {name!r} needs regex = \"...\" (any parser) or pick = \".path\" (ndjson/json)")
    if (capture.pick is not None or capture.match) and step.parser == "text":
        key = "pick" if capture.pick is not None else "match"
        raise f.fail("captures", f"{key} reads JSON: set parser = \"ndjson\" (per line) or \"json\" (the whole "
                                 "output) on this step; with the text parser only regex works", name, key)
    return capture


def _json_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _results(f: _Fields, step: Step) -> ResultsSpec:
    table = f.table("results", "result fields mapped to capture keys")
    spec = ResultsSpec(where=f.at("results"))
    for key, value in table.items():
        if key not in RESULT_FIELDS:
            raise f.fail("results", f"unknown result field {key!r}{did_you_mean(key, list(RESULT_FIELDS))}; "
                                    f"fields: {', '.join(RESULT_FIELDS)}", key)
        if not isinstance(value, str) or not value.strip():
            raise f.fail("results", "expected a capture key (\"step_id.capture\" or \".capture\"), "
                         f"got {describe_value(value)}", key)
        ref = value.strip()
        if ref.startswith("."):
            # Template shorthand: ".size" is this step's own capture.
            if not step.id:
                raise f.fail("results", f"{ref!r} means this step's own capture, but the step has no id", key)
            ref = f"{step.id}{ref}"
        if "." not in ref.strip("."):
            raise f.fail("results", f"{value!r} is not a capture key \"step_id.capture\"", key)
        setattr(spec, key, ref)
    return spec


def _wait_for(f: _Fields, step: Step) -> None:
    pass  # id and timeout are common keys


def _wait(f: _Fields, step: Step) -> None:
    step.duration = f.duration("duration")


def _link_condition(f: _Fields, step: Step) -> None:
    t = f.t
    if "condition" in t and "impair" in t:
        raise f.fail("impair", "give either condition or impair (its alias), not both")
    key = "condition" if "condition" in t else "impair" if "impair" in t else None
    if key is not None:
        step.condition = parse_condition(t[key], f.at(key), step.device or "")
    step.interface = f.opt_string("interface", "an interface name such as \"eth0\"")
    if "direction" in t:
        direction = f.string("direction", "up, down or both")
        if direction not in DIRECTIONS:
            raise f.fail("direction", f"direction is one of {', '.join(DIRECTIONS)}, not {direction!r}")
        step.direction = direction


def parse_condition(value: object, where: Where, node: str) -> LinkCondition | None:
    """A link condition as sims write it; "none" (or an omitted condition) clears."""
    from ..link_shaping import limits_of

    if isinstance(value, str) and value.strip().lower() in ("none", "off", "clear"):
        return None
    if not isinstance(value, (str, Mapping)):
        raise where.error(f"expected a link condition: a preset name such as \"wifi\" or a table such as "
                          f"{{ latency_ms = 100 }}, got {describe_value(value)}")
    try:
        limits_of(dict(value) if isinstance(value, Mapping) else value, node, "")
        return LinkCondition.parse(dict(value) if isinstance(value, Mapping) else value)
    except TopologyError as exc:
        raise where.error(exc.message) from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise where.error(str(exc)) from None


def _link_updown(f: _Fields, step: Step) -> None:
    step.interface = f.opt_string("interface", "an interface name such as \"eth0\"")


def _default_route(f: _Fields, step: Step) -> None:
    step.to = f.string("to", "the interface that carries the default route")


def _gen_certs(f: _Fields, step: Step) -> None:
    if "cn" in f.t:
        step.cn = f.string("cn", "the certificate's common name")
        if not step.cn:
            raise f.fail("cn", "the common name is empty")
    if "san" in f.t:
        step.san = f.strings("san", "subject alternative names: IP addresses or DNS names")


def _gen_file(f: _Fields, step: Step) -> None:
    step.content = f.string("content", "the file's text")


def _assert(f: _Fields, step: Step) -> None:
    t = f.t
    if "check" not in t and "checks" not in t:
        raise step.where.error("an assert step needs check = \"...\" or checks = [\"...\", ...]")
    if "check" in t:
        step.checks.append(parse_check(t["check"], f.at("check")))
    if "checks" in t:
        value = t["checks"]
        if not isinstance(value, list):
            raise f.fail("checks", f"expected an array of assertion strings, got {describe_value(value)}")
        for i, text in enumerate(value):
            step.checks.append(parse_check(text, f.at("checks", i)))
    if not step.checks:
        raise f.fail("checks", "checks is empty; give at least one assertion")


_ACTION_PARSERS = {
    "run": _process,
    "spawn": _process,
    "wait-for": _wait_for,
    "wait": _wait,
    "set-link-condition": _link_condition,
    "link-down": _link_updown,
    "link-up": _link_updown,
    "set-default-route": _default_route,
    "gen-certs": _gen_certs,
    "gen-file": _gen_file,
    "assert": _assert,
}
