"""The HTTP transport through a real reverse proxy that refuses WebSocket upgrades (nginx from
Debian, default buffering): the socket cannot open, the stream and its POSTs work, and events arrive
as they happen (the gateway's `X-Accel-Buffering: no`), not when nginx's buffer fills."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.helpers import RunningGateway, token
from tests.proxy_support import proxy_without_upgrades
from tests.sse_support import SseClient

Factory = Callable[..., Awaitable[RunningGateway]]


@pytest.mark.gen_test(timeout=30)
async def test_through_nginx_the_socket_fails_and_the_stream_works(make_gateway: Factory) -> None:
    gw = await make_gateway(ping_interval=0.5, ping_timeout=1.0)
    with proxy_without_upgrades(gw.port) as port:
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{port}/ws?token={token('alice')}", request_timeout=5))
        assert refused.value.code == 400  # the upgrade reached the gateway as a plain GET

        alice = await SseClient.open(port, token("alice"))
        bob = await gw.client("bob")  # directly, over a WebSocket
        await alice.join("r")
        await bob.join("r")
        for i in range(3):  # each one alone on the stream: a buffering proxy would hold it back (deadline 3 s)
            bob.send("message", {"roomId": "r", "content": f"live {i}"})
            got = await alice.expect("message", timeout=3, match=lambda f: f["payload"]["senderId"] == "bob")
            assert got["payload"]["content"] == f"live {i}"
        alice.send("message", {"roomId": "r", "content": "posted through nginx"})
        posted = await bob.expect("message", match=lambda f: f["payload"]["senderId"] == "alice")
        assert posted["payload"]["content"] == "posted through nginx"
        await alice.heartbeat()  # comments pass too: nginx does not cut an idle stream
