"""A real HTTP receiver for webhook tests (aiohttp on 127.0.0.1): verifies Tollgate-Signature like a customer's
endpoint would (Stripe's scheme, over the raw body), records what it accepted, and can fail or stall on purpose."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = ["Receiver", "start_receiver", "verify"]


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a receiver does: recompute v1 over "t.body" with its secret, compare in constant time."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    if "t" not in parts or "v1" not in parts:
        return False
    expected = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts["v1"])


@dataclass
class Receiver:
    secret: str = ""
    #: Answer 500 to this many requests before answering 200.
    fail_first: int = 0
    #: Seconds to wait before answering (a slow receiver).
    delay: float = 0.0
    accepted: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    bad_signatures: int = 0
    requests: int = 0
    runner: web.AppRunner | None = None
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        if not verify(self.secret, request.headers.get("Tollgate-Signature", ""), body):
            self.bad_signatures += 1
            return web.Response(status=400, text="bad signature")
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=500, text="try later")
        self.accepted.append(json.loads(body))
        self.headers.append(dict(request.headers))
        return web.Response(status=200, text="ok")

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def start_receiver(**options: Any) -> Receiver:
    receiver = Receiver(**options)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    receiver.runner = web.AppRunner(app, access_log=None)
    await receiver.runner.setup()
    site = web.TCPSite(receiver.runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    receiver.url = f"http://127.0.0.1:{port}/hook"
    return receiver
