"""Who gets a socket: MAX_CONNECTIONS (503) and MAX_CONNECTIONS_PER_IP (429) before the upgrade,
client addresses believed only from TRUSTED_PROXIES, /metrics only on INTERNAL_PORT, /dev/token
only for loopback clients."""

from __future__ import annotations

import asyncio
import logging

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from tornado.web import Application

from services.admission import AddressCounts, TrustedProxies, address_bucket
from tests.helpers import Client, refused_status, token, wait_for

T = 20


async def _status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        resp = await AsyncHTTPClient().fetch(url, headers=headers or {})
    except HTTPClientError as exc:
        return exc.code
    return resp.code


@pytest.mark.gen_test(timeout=T)
async def test_max_connections_refuses_with_503_until_one_closes(make_gateway):
    gw = await make_gateway(max_connections=2)
    first, _second = await gw.client("a"), await gw.client("b")
    status, body = await refused_status(f"{gw.url}?token={token('c')}")
    assert status == 503 and "limit" in body["error"]
    first.close()

    async def admitted() -> bool:
        try:
            client = await Client.connect(gw.url, token("c"))
        except HTTPClientError:
            return False
        client.close()
        return True

    await wait_for(admitted, what="a slot after a close")


@pytest.mark.gen_test(timeout=T)
async def test_max_connections_per_ip_refuses_with_429(make_gateway):
    gw = await make_gateway(max_connections_per_ip=2)
    await gw.client("a")
    await gw.client("b")
    status, body = await refused_status(f"{gw.url}?token={token('c')}")
    assert status == 429 and body["error"]


@pytest.mark.gen_test(timeout=T)
async def test_forwarded_addresses_count_only_from_trusted_proxies(make_gateway):
    """Behind a trusted proxy each client address has its own allowance; from anyone else the
    headers are ignored and the peer address counts."""
    trusting = await make_gateway(max_connections_per_ip=1, trusted_proxies=("127.0.0.0/8",))
    one = {"X-Forwarded-For": "198.51.100.7, 127.0.0.5"}  # the client, then a trusted hop
    other = {"X-Forwarded-For": "198.51.100.8"}
    await Client.connect(trusting.url, token("a"), headers=one)
    await Client.connect(trusting.url, token("b"), headers=other)  # another client: admitted
    status, _ = await refused_status(f"{trusting.url}?token={token('c')}", headers=one)
    assert status == 429

    untrusting = await make_gateway(max_connections_per_ip=1)
    await Client.connect(untrusting.url, token("a"), headers=one)
    status, _ = await refused_status(f"{untrusting.url}?token={token('b')}", headers=other)
    assert status == 429  # spoofed headers do not buy a second allowance


@pytest.mark.gen_test(timeout=T)
async def test_spoofed_client_address_is_not_logged(make_gateway, caplog):
    caplog.set_level(logging.INFO)
    gw = await make_gateway()
    headers = {"X-Real-Ip": "6.6.6.6", "X-Forwarded-For": "6.6.6.6"}
    status, _ = await refused_status(f"{gw.url}?token=bad", headers=headers)
    assert status == 401
    remotes = [r.__dict__.get("remote") for r in caplog.records if r.getMessage() == "upgrade refused"]
    assert remotes == ["127.0.0.1"]


def test_client_ip_from_trusted_proxies_only():
    proxies = TrustedProxies(["10.0.0.0/8", "127.0.0.1"])
    assert proxies.client_ip("127.0.0.1", "1.2.3.4, 10.1.1.1", None) == "1.2.3.4"
    assert proxies.client_ip("127.0.0.1", "6.6.6.6, 1.2.3.4, 10.1.1.1", None) == "1.2.3.4"  # left of a client: forged
    assert proxies.client_ip("127.0.0.1", "junk, 10.1.1.1", None) == "10.1.1.1"
    assert proxies.client_ip("127.0.0.1", None, "1.2.3.4") == "1.2.3.4"
    assert proxies.client_ip("127.0.0.1", "6.6.6.6", "1.2.3.4") == "1.2.3.4"  # the proxy's own header wins
    assert proxies.client_ip("8.8.8.8", "1.2.3.4", "1.2.3.4") == "8.8.8.8"  # not a proxy of ours
    assert proxies.client_ip("::ffff:127.0.0.1", "::ffff:1.2.3.4", None) == "1.2.3.4"
    assert TrustedProxies([]).client_ip("127.0.0.1", "1.2.3.4", "1.2.3.4") == "127.0.0.1"


def test_ipv6_clients_are_counted_per_64():
    counts = AddressCounts(max_per_ip=2)
    assert counts.add(address_bucket("2001:db8:1:2::1"))
    assert counts.add(address_bucket("2001:db8:1:2::ffff"))
    assert not counts.add(address_bucket("2001:db8:1:2:aaaa::3"))  # same /64
    assert counts.add(address_bucket("2001:db8:1:3::1"))  # another /64
    counts.remove(address_bucket("2001:db8:1:2::1"))
    assert counts.add(address_bucket("2001:db8:1:2::9"))


@pytest.mark.gen_test(timeout=T)
async def test_forwarded_address_does_not_stick_to_a_kept_alive_connection(make_gateway):
    """A proxy reuses its upstream connections: each request's client is resolved from the TCP peer
    again, not from the address the previous request was forwarded for."""
    import http.client

    gw = await make_gateway(dev=True, trusted_proxies=("127.0.0.1/32",))

    def two_requests() -> tuple[int, int]:
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            conn.request("GET", "/dev/token?sub=a", headers={"X-Forwarded-For": "203.0.113.9"})
            first = conn.getresponse()
            first.read()
            conn.request("GET", "/dev/token?sub=b")  # the same connection, no forwarding header
            second = conn.getresponse()
            second.read()
            return first.status, second.status
        finally:
            conn.close()

    assert await asyncio.to_thread(two_requests) == (403, 200)


def test_only_connections_idle_long_enough_are_shed():
    import time

    from handlers.connection_book import SHED_AFTER, ConnectionBook

    class Stream:
        closed = False

        def close(self) -> None:
            self.closed = True

    book = ConnectionBook(budget=2)
    old, fresh = Stream(), Stream()
    book.waiting[old] = time.monotonic() - SHED_AFTER - 0.1  # type: ignore[index]
    book.waiting[fresh] = time.monotonic()  # type: ignore[index]
    assert book.shed_oldest_waiting() and old.closed
    assert not book.shed_oldest_waiting() and not fresh.closed  # just accepted: it may yet speak


@pytest.mark.gen_test(timeout=T)
async def test_a_listener_paused_for_emfile_then_for_the_budget_resumes_when_a_connection_closes():
    import socket

    from handlers.connection_book import ConnectionBook
    from handlers.http_server import GatewayHTTPServer

    book = ConnectionBook(budget=1)
    server = GatewayHTTPServer(
        Application(), book=book, trusted=TrustedProxies([]), body_limit=lambda *_: 0, kept_alive_timeout=5.0
    )
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    server.add_sockets([listener])
    try:
        fd = listener.fileno()
        server._backoff = 0.05  # as the EMFILE branch leaves it
        server._pause(listener, "test: as after EMFILE", retry_in=0.05, timer_only=True)
        book.open = 1  # meanwhile the budget filled (say, through the internal port)
        client = socket.create_connection(listener.getsockname())  # makes the listener readable
        await wait_for(lambda: fd in server._paused and fd not in server._timed, what="a budget pause")
        book.budget = 10
        book.closed(object())  # type: ignore[arg-type]  # a connection closed
        await wait_for(lambda: fd not in server._paused and book.open == 1, what="accepting again")
        client.close()
    finally:
        server.stop()


@pytest.mark.gen_test(timeout=T)
async def test_metrics_only_on_the_internal_port(make_gateway):
    gw = await make_gateway(internal_port=0)
    internal = f"http://127.0.0.1:{gw.internal_port}"
    assert await _status(f"{gw.http}/metrics") == 404
    assert await _status(f"{internal}/metrics") == 200
    for path in ("/healthz", "/readyz"):
        assert await _status(f"{gw.http}{path}") == 200
        assert await _status(f"{internal}{path}") == 200
    assert await _status(f"{internal}/") == 404  # no WebSockets, no demo there
    plain = await make_gateway()
    assert await _status(f"{plain.http}/metrics") == 200  # without INTERNAL_PORT, as before


@pytest.mark.gen_test(timeout=T)
async def test_dev_token_answers_loopback_clients_only(make_gateway):
    gw = await make_gateway(dev=True, trusted_proxies=("127.0.0.1/32",))
    assert await _status(f"{gw.http}/dev/token?sub=me") == 200
    forwarded = {"X-Forwarded-For": "203.0.113.9"}  # a client seen through a proxy: not loopback
    assert await _status(f"{gw.http}/dev/token?sub=me", headers=forwarded) == 403


@pytest.mark.slow  # a gateway process with RLIMIT_NOFILE 256
@pytest.mark.gen_test(timeout=90)
async def test_descriptor_exhaustion_refuses_new_sockets_but_keeps_health_and_open_sockets():
    """400 idle TCP sockets (no token needed) against RLIMIT_NOFILE 256: the server neither spins
    nor floods its log; it sheds the idle sockets that sent nothing, /healthz answers, the open
    WebSocket keeps working and a new client still gets in."""
    import socket

    from tests.helpers import SECRET, spawn_server

    proc = spawn_server("--port", "0", "--host", "127.0.0.1", env={"JWT_SECRET": SECRET}, nofile=256)
    idle: list[socket.socket] = []
    try:
        early = await Client.connect(proc.url, token("early"))
        await early.join("r")
        for _ in range(400):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", proc.port))
            idle.append(sock)
        await wait_for(lambda: any("descriptor budget reached" in line for line in proc.lines), what="the budget")

        async def healthy() -> bool:
            try:
                resp = await AsyncHTTPClient().fetch(f"{proc.http}/healthz", request_timeout=2)
            except (TimeoutError, HTTPClientError, OSError):
                return False
            return resp.code == 200

        await wait_for(healthy, timeout=20, what="/healthz while descriptors are short")
        early.send("ping")
        await early.expect("pong")
        late = await wait_for(lambda: _try_connect(proc.url), timeout=20, what="a new client")
        late.send("ping")
        await late.expect("pong")
        noisy = [line for line in proc.lines if "Traceback" in line or "Too many open files" in line]
        assert not noisy, noisy[:3]
        episodes = [line for line in proc.lines if "descriptor budget reached" in line or "out of file" in line]
        assert 1 <= len(episodes) <= 4, episodes
    finally:
        for sock in idle:
            sock.close()
        proc.kill()


async def _try_connect(url: str) -> Client | None:
    try:
        return await Client.connect(url, token("late"))
    except (HTTPClientError, OSError):
        return None
