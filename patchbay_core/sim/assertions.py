"""`assert` expressions: `step_id.capture OP rhs`.

Operators: `==`, `!=` (exact string match), `contains` (substring), `matches` (a regular
expression searched in the value), and `>=`, `<=`, `>`, `<` (both sides as numbers).
"""

from __future__ import annotations

import re
import warnings

from .interpolate import split_capture_key
from .model import Check, Where

OPERATORS = ("==", "!=", "contains", "matches", ">=", "<=", ">", "<")
NUMERIC = (">=", "<=", ">", "<")
_EXPR = re.compile(r"\s*(\S+)\s+(==|!=|contains|matches|>=|<=|>|<)(?:\s+(.*?))?\s*")


def translate_regex(pattern: str) -> str:
    """Rust regex named groups `(?<name>...)` in Python spelling."""
    return re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", pattern)


def compile_regex(pattern: str, where: Where, what: str = "regex") -> re.Pattern[str]:
    try:
        with warnings.catch_warnings():  # a user's "[[" draws a FutureWarning from re: the pattern is theirs
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(translate_regex(pattern))
    except (re.error, RecursionError, OverflowError, ValueError) as exc:
        raise where.error(f"{what} {pattern!r} is not a valid regular expression: {exc}") from None


def parse_check(text: object, where: Where) -> Check:
    if not isinstance(text, str):
        raise where.error("expected an assertion string such as \"server.port matches [0-9]+\"")
    m = _EXPR.fullmatch(text)
    if m is None:
        raise where.error(f"cannot read assertion {text!r}: expected \"STEP_ID.CAPTURE OPERATOR VALUE\" with an "
                          f"operator among {', '.join(OPERATORS)}")
    lhs, op, rhs = m.group(1), m.group(2), m.group(3) or ""
    if split_capture_key(lhs) is None:
        raise where.error(f"assertion {text!r}: the left side {lhs!r} must be a capture key STEP_ID.CAPTURE")
    if not rhs and op not in ("==", "!="):
        raise where.error(f"assertion {text!r}: {op} needs a value on its right")
    if op == "matches" and not has_refs(rhs):
        compile_regex(rhs, where, "assertion pattern")
    if op in NUMERIC and not has_refs(rhs) and _number(rhs) is None:
        raise where.error(f"assertion {text!r}: {op} compares numbers; {rhs!r} is not a number")
    return Check(text.strip(), lhs, op, rhs, where)


def has_refs(text: str) -> bool:
    """Whether the right side refers to something resolved at run time (a `$` may also be an
    anchor of a pattern)."""
    return "${" in text or re.search(r"\$NETSIM_", text, re.IGNORECASE) is not None


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def evaluate(check: Check, value: str, rhs: str) -> str | None:
    """None when the check passes; otherwise why it failed."""
    op = check.op
    if op == "==":
        ok = value == rhs
    elif op == "!=":
        ok = value != rhs
    elif op == "contains":
        ok = rhs in value
    elif op == "matches":
        ok = compile_regex(rhs, check.where, "assertion pattern").search(value) is not None
    else:
        left, right = _number(value), _number(rhs)
        if left is None:
            return f"{check.lhs} is {value!r}, which is not a number ({op} compares numbers)"
        if right is None:
            return f"the right side {rhs!r} is not a number ({op} compares numbers)"
        ok = {">=": left >= right, "<=": left <= right, ">": left > right, "<": left < right}[op]
    if ok:
        return None
    return f"{check.lhs} is {value!r}"
