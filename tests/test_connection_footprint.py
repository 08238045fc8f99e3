"""What an upgraded socket keeps of its HTTP request (handlers/socket.py `_shed_request`): only what
log lines name. The headers, the query with its token and the detached HTTP connection are let go,
and the socket keeps working (BENCHMARKS.md, "Memory per idle connection")."""

from __future__ import annotations

import pytest

from tests.helpers import RunningGateway, wait_for


async def _handler_of(gw: RunningGateway, user: str) -> object:
    await wait_for(lambda: any(s.user_id == user for s in gw.gateway.sessions), timeout=5, what="the session")
    session = next(s for s in gw.gateway.sessions if s.user_id == user)
    return session.transport._handler  # type: ignore[attr-defined]


@pytest.mark.gen_test(timeout=20)
async def test_an_upgraded_socket_keeps_only_what_logs_name_of_its_request(gw: RunningGateway) -> None:
    alice = await gw.client("alice")
    handler = await _handler_of(gw, "alice")
    request = handler.request  # type: ignore[attr-defined]
    assert request.connection is None
    assert len(request.headers) == 0
    assert request.query == "" and "token" not in request.uri
    assert request.arguments == {} and request.query_arguments == {}
    assert request.path == "/" and request.method == "GET" and request.remote_ip == "127.0.0.1"

    alice.send("ping", request_id="after-the-shedding")
    await alice.expect("pong", match=lambda f: f.get("requestId") == "after-the-shedding")
    alice.close()
    await wait_for(lambda: not gw.gateway.sessions, timeout=5, what="the session to end")
