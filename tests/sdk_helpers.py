"""Helpers for tests of the client SDK and CLI: waiting for typed SDK events with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from realtime_gateway_client import Event, GatewayClient


async def expect_event(
    client: GatewayClient,
    kind: type[Any],
    match: Callable[[Any], bool] | None = None,
    timeout: float = 5.0,
) -> Any:
    """Consume events until one of `kind` (matching `match`) arrives; fail after `timeout`."""
    return (await events_until(client, kind, match, timeout))[-1]


async def events_until(
    client: GatewayClient, kind: type[Any], match: Callable[[Any], bool] | None = None, timeout: float = 15.0
) -> list[Event]:
    """Every event up to and including the first of `kind` (matching `match`), in order."""
    deadline = time.monotonic() + timeout
    seen: list[Event] = []
    stream = client.events()
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                event = await asyncio.wait_for(stream.__anext__(), max(left, 0.001))
            except TimeoutError:
                raise AssertionError(f"no {kind.__name__} within {timeout}s; saw {seen!r}") from None
            seen.append(event)
            if isinstance(event, kind) and (match is None or match(event)):
                return seen
    finally:
        await stream.aclose()
