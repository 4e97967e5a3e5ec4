"""Await work done on other threads, from asyncio or trio callers alike.

Labs run kernel work and node code on threads of their own; callers hold a
`concurrent.futures.Future` and wait here without blocking their event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from typing import TypeVar

import sniffio

T = TypeVar("T")


async def wait_future(fut: concurrent.futures.Future[T]) -> T:
    """Wait for `fut`; if the caller is cancelled, cancel `fut` too."""
    library = sniffio.current_async_library()
    if library == "asyncio":
        return await asyncio.wrap_future(fut)
    if library == "trio":
        return await _wait_trio(fut)
    raise RuntimeError(f"patchbay supports asyncio and trio callers, not {library}")


async def _wait_trio(fut: concurrent.futures.Future[T]) -> T:
    import trio

    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    fut.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        fut.cancel()
        raise
    return fut.result()


def resolved(value: T) -> concurrent.futures.Future[T]:
    fut: concurrent.futures.Future[T] = concurrent.futures.Future()
    fut.set_result(value)
    return fut
