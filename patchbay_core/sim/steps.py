"""One async function per step action. Each raises SimError (naming the step) when it fails."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from ..errors import PatchbayError
from . import certs
from .assertions import evaluate, has_refs
from .context import SimContext
from .durations import format_seconds
from .model import DEFAULT_TIMEOUT, Step
from .procs import describe_exit, safe_name

Action = Callable[[SimContext, Step], Awaitable[None]]


def _failure(step: Step, key: str | None, exc: PatchbayError) -> Exception:
    message = getattr(exc, "message", None) or str(exc)
    return step.at(key).error(f"{step.action} on {step.device!r}: {message}")


async def run(ctx: SimContext, step: Step) -> None:
    sp = await ctx.start_process(step)
    with anyio.move_on_after(ctx.remaining()) as scope:
        code = await sp.wait()
    if scope.cancelled_caught:
        await sp.stop()
        limit = format_seconds(step.timeout if step.timeout is not None else DEFAULT_TIMEOUT)
        raise step.at("timeout" if step.timeout is not None else None).error(
            f"run on {step.device!r} still running after {limit}; it was stopped (set timeout = \"...\" on the "
            "step for longer)")
    ctx.collect_results(step)
    if code != 0:
        tail = "\n".join(f"  {line}" for line in sp.stderr_tail)
        stderr = f"; its stderr ended with:\n{tail}" if tail else ""
        raise step.at("cmd").error(f"{step.cmd[0]!r} on {step.device!r} {describe_exit(code)}{stderr}")


async def spawn(ctx: SimContext, step: Step) -> None:
    assert step.id is not None
    sp = await ctx.start_process(step)
    ctx.processes[step.id] = sp
    if step.results is not None:
        ctx.pending_results[step.id] = step
    if step.ready_after:
        await anyio.sleep(step.ready_after)


async def wait_for(ctx: SimContext, step: Step) -> None:
    assert step.id is not None
    sp = ctx.processes.get(step.id)
    if sp is None:
        return  # a run step with this id: it is over already
    spawned = ctx.pending_results.get(step.id)
    timeout = step.timeout
    if timeout is None:
        timeout = spawned.timeout if spawned is not None and spawned.timeout is not None else DEFAULT_TIMEOUT
    with anyio.move_on_after(timeout) as scope:
        code = await sp.wait()
    if scope.cancelled_caught:
        raise step.at("timeout" if step.timeout is not None else "id").error(
            f"wait-for {step.id!r}: still running after {format_seconds(timeout)}")
    if code != 0:
        ctx.warn(step, f"the process of spawn {step.id!r} {describe_exit(code)}")
    if spawned is not None:
        ctx.collect_results(spawned)
        ctx.pending_results.pop(step.id, None)


async def wait(ctx: SimContext, step: Step) -> None:
    assert step.duration is not None
    await anyio.sleep(step.duration)


async def set_link_condition(ctx: SimContext, step: Step) -> None:
    assert step.device is not None
    iface = step.interface or ctx.first_iface(step.device)
    try:
        await ctx.device(step.device).set_link_condition(iface, step.condition, direction=step.direction)
    except PatchbayError as exc:
        raise _failure(step, "condition", exc) from exc


async def link_down(ctx: SimContext, step: Step) -> None:
    assert step.device is not None
    try:
        await ctx.device(step.device).link_down(step.interface or ctx.first_iface(step.device))
    except PatchbayError as exc:
        raise _failure(step, "interface", exc) from exc


async def link_up(ctx: SimContext, step: Step) -> None:
    assert step.device is not None
    try:
        await ctx.device(step.device).link_up(step.interface or ctx.first_iface(step.device))
    except PatchbayError as exc:
        raise _failure(step, "interface", exc) from exc


async def set_default_route(ctx: SimContext, step: Step) -> None:
    assert step.device is not None and step.to is not None
    try:
        await ctx.device(step.device).set_default_route(step.to)
    except PatchbayError as exc:
        raise _failure(step, "to", exc) from exc


async def gen_certs(ctx: SimContext, step: Step) -> None:
    assert step.id is not None
    names = []
    if step.device is not None:
        ip = ctx.device(step.device).ip
        if ip is not None:
            names.append(str(ip))
    names += [await ctx.interpolate(s, step.at("san")) for s in step.san]
    directory = ctx.dir / "certs" / safe_name(step.id)
    try:
        cert, key = await anyio.to_thread.run_sync(certs.generate, directory, step.cn, names)
    except (ValueError, OSError) as exc:
        raise step.at("san").error(f"cannot make the certificate: {exc}") from None
    ctx.captures.record(f"{step.id}.cert_pem_path", str(cert))
    ctx.captures.record(f"{step.id}.key_pem_path", str(key))


async def gen_file(ctx: SimContext, step: Step) -> None:
    assert step.id is not None and step.content is not None
    text = await ctx.interpolate(step.content, step.at("content"))
    directory = ctx.dir / "files" / safe_name(step.id)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "content"
    path.write_text(text, encoding="utf-8")
    ctx.captures.record(f"{step.id}.path", str(path))


async def assert_(ctx: SimContext, step: Step) -> None:
    for check in step.checks:
        where = check.where.for_step(step.name)
        value = ctx.captures.get(check.lhs)
        if value is None:
            raise where.error(f"assertion failed: {check.text!r}: {check.lhs} has no value (the capture was never "
                              "produced; did its step run and print what the capture looks for?)")
        rhs = await ctx.interpolate(check.rhs, where) if has_refs(check.rhs) else check.rhs
        why = evaluate(check, value, rhs)
        if why is not None:
            raise where.error(f"assertion failed: {check.text!r}: {why}")


ACTIONS: dict[str, Action] = {
    "run": run,
    "spawn": spawn,
    "wait-for": wait_for,
    "wait": wait,
    "set-link-condition": set_link_condition,
    "link-down": link_down,
    "link-up": link_up,
    "set-default-route": set_default_route,
    "gen-certs": gen_certs,
    "gen-file": gen_file,
    "assert": assert_,
}


async def execute(ctx: SimContext, step: Step) -> None:
    ctx.begin(step)
    await ctx.wait_requires(step)
    try:
        await ACTIONS[step.action](ctx, step)
    except BaseException:
        if step.id and step.action not in ("spawn", "wait-for"):
            ctx.captures.over(step.id, "failed")
        raise
    if step.id and step.action in ("run", "gen-certs", "gen-file"):
        ctx.captures.over(step.id, "is over")
