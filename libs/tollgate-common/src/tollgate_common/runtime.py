"""Process lifecycle shared by every service's ``__main__``: the event loop, signals and a graceful stop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

__all__ = ["Service", "run", "serve_until", "stop_event"]


def stop_event() -> asyncio.Event:
    """An event set on SIGTERM or SIGINT (first signal: graceful stop; the composition root drains and closes)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on uvloop when available."""
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class Service(Protocol):
    """What a service's composition root starts and stops (billing's ``BillingApp``, router's ``RouterServer``…)."""

    async def start(self) -> Any: ...

    async def stop(self) -> Any: ...


async def serve_until(service: Service, stop: asyncio.Event) -> None:
    """Start ``service``, wait for ``stop`` (SIGTERM/SIGINT in ``__main__``, or a test), then stop it gracefully.

    ``stop()`` also runs when ``start()`` fails half-way, so whatever had started is closed.
    """
    try:
        await service.start()
        await stop.wait()
    finally:
        await service.stop()
