"""The edges of the WebSocket protocol over raw sockets: every protocol error is a close frame the
client can read (1002, 1007, 1009), control frames cost what any frame costs (rate limit, abuse
limit, outbound bound), and one connection's burst cannot hold the loop."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time

import pytest

from services.metrics import METRICS
from tests.helpers import RawWebSocket, encode_frame, token

T = 30

PROTOCOL_ERRORS = {
    # name: (frame bytes, expected close code)
    "unmasked-text": (encode_frame(0x81, b'{"type":"ping","payload":{}}', masked=False), 1002),
    "reserved-bits": (encode_frame(0x80 | 0x40 | 0x1, b"{}"), 1002),
    "unknown-opcode": (encode_frame(0x80 | 0x3, b"x"), 1002),
    "fragmented-ping": (encode_frame(0x09, b"x"), 1002),
    "continuation-without-start": (encode_frame(0x80, b"x"), 1002),
    "invalid-utf8": (encode_frame(0x81, b'{"type":"ping","payload":{"x":"\xff\xfe"}}'), 1007),
    "truncated-utf8": (encode_frame(0x81, "é".encode()[:1]), 1007),
    "unmasked-ping": (encode_frame(0x89, b"hi", masked=False), 1002),
    "close-of-one-byte": (encode_frame(0x88, b"\x03"), 1002),
    "close-code-1005": (encode_frame(0x88, struct.pack("!H", 1005)), 1002),
    "close-code-999": (encode_frame(0x88, struct.pack("!H", 999)), 1002),
    "close-reason-not-utf8": (encode_frame(0x88, struct.pack("!H", 1000) + b"\xff"), 1007),
    "close-4000-is-echoed": (encode_frame(0x88, struct.pack("!H", 4000) + b"bye"), 4000),
}


def _read_close(raw: RawWebSocket, timeout: float = 10.0) -> int | None:
    """The close code the server sent; raises (ECONNRESET) if the connection was reset instead."""
    return raw.read_until_close(timeout)


def _close_code_after(port: int, sub: str, data: bytes) -> int | None:
    """Send `data` on a fresh connection (a reset while sending raises), then read the close code."""
    raw = RawWebSocket(port, token(sub), rcvbuf=65536)
    try:
        raw.sock.sendall(data)
        return _read_close(raw)
    finally:
        raw.close()


@pytest.mark.gen_test(timeout=T)
@pytest.mark.parametrize("case", sorted(PROTOCOL_ERRORS))
async def test_protocol_errors_close_with_a_readable_code(make_gateway, case):
    gw = await make_gateway()
    data, code = PROTOCOL_ERRORS[case]

    def run() -> tuple[int | None, dict[str, object] | None]:
        raw = RawWebSocket(gw.port, token("raw"), rcvbuf=65536)
        raw.send_text('{"type":"ping","payload":{},"requestId":"before"}')
        pong = raw.recv_json()
        raw.sock.sendall(data)
        try:
            return _read_close(raw), pong
        finally:
            raw.close()

    got, pong = await asyncio.to_thread(run)
    assert pong is not None and pong["type"] == "pong"
    assert got == code


@pytest.mark.gen_test(timeout=T)
async def test_oversized_frame_sent_whole_still_reads_1009(make_gateway):
    """A client that writes its whole oversized frame (as asyncio streams do) must read close 1009,
    not a connection reset: the server reads and drops the rest before closing."""
    gw = await make_gateway(max_message_bytes=1024)
    payload = json.dumps({"type": "message", "payload": {"roomId": "r", "content": "x" * 16_000_000}})
    assert await asyncio.to_thread(_close_code_after, gw.port, "big", encode_frame(0x81, payload.encode())) == 1009


@pytest.mark.gen_test(timeout=T)
async def test_oversized_frame_claiming_exabytes_costs_nothing(make_gateway):
    """A header that claims 2**62 bytes is refused at once, and nothing is buffered for it."""
    gw = await make_gateway(max_message_bytes=1024)
    claim = encode_frame(0x81, b"x" * 100, length=2**62)
    assert await asyncio.to_thread(_close_code_after, gw.port, "claims", claim) == 1009


@pytest.mark.gen_test(timeout=T)
async def test_ping_frames_count_toward_the_rate_and_abuse_limits(make_gateway):
    """A flood of WebSocket pings (control frames, never seen by on_message before) is rate limited
    (no pong past the budget) and closed with 1008, while another client is still answered."""
    gw = await make_gateway(rate_limit=5, rate_burst=10, invalid_frame_limit=20)
    bystander = await gw.client("calm")

    def flood() -> tuple[int, int | None]:
        raw = RawWebSocket(gw.port, token("pinger"), rcvbuf=65536)
        raw.sock.sendall(b"".join(encode_frame(0x89, b"p" * 125) for _ in range(200)))
        pongs = 0
        while True:
            frame = raw.recv_frame(10)
            if frame is None:
                raw.close()
                return pongs, None
            if frame[0] == 0xA:
                pongs += 1
            if frame[0] == 0x8:
                raw.close()
                return pongs, struct.unpack("!H", frame[1][:2])[0]

    pongs, code = await asyncio.to_thread(flood)
    assert code == 1008
    assert 10 <= pongs <= 12  # the burst, and what trickled back in meanwhile; not 200
    bystander.send("ping")
    await bystander.expect("pong")


@pytest.mark.gen_test(timeout=T)
async def test_pongs_count_toward_the_outbound_bound(make_gateway):
    """A client that floods pings and never reads fills its outbound queue with pongs and is closed
    as a slow consumer (4008), instead of growing the server's memory without bound."""
    gw = await make_gateway(rate_limit=1e6, rate_burst=1_000_000, outbound_queue_frames=200)
    overflows = METRICS.queue_overflows._value.get()

    def flood() -> int | None:
        raw = RawWebSocket(gw.port, token("hoarder"), rcvbuf=4096)
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        burst = b"".join(encode_frame(0x89, os.urandom(125)) for _ in range(500))
        try:
            for _ in range(100):  # 50,000 pings: more pongs than the kernel's buffers hold
                raw.sock.sendall(burst)
        except OSError:
            pass  # the server stopped reading: it has closed us
        try:
            return _read_close(raw, timeout=10)  # now read: the pongs that left, then the close
        finally:
            raw.close()

    code = await asyncio.to_thread(flood)
    assert code == 4008
    assert METRICS.queue_overflows._value.get() > overflows


@pytest.mark.gen_test(timeout=T)
async def test_a_burst_of_frames_does_not_hold_the_loop(make_gateway):
    """20,000 pings written at once by one client are handled one per turn of the loop: another
    client's ping, sent when the burst's first pong arrives, is answered before its last pong."""
    gw = await make_gateway(rate_limit=1e6, rate_burst=1_000_000, outbound_queue_frames=100_000)
    bystander = await gw.client("calm")
    first_reply = asyncio.Event()
    loop = asyncio.get_running_loop()
    count = 20_000

    def burst() -> float:
        raw = RawWebSocket(gw.port, token("burst"), rcvbuf=1 << 20)
        raw.sock.sendall(b"".join(encode_frame(0x89, b"%05d" % i) for i in range(count)))
        expected, received = count * 7, 0  # each pong: 2 header bytes and the 5-byte payload
        while received < expected:
            chunk = raw.sock.recv(1 << 16)
            assert chunk, "closed before every pong arrived"
            if not received:
                loop.call_soon_threadsafe(first_reply.set)
            received += len(chunk)
        raw.close()
        return time.monotonic()

    flood = asyncio.ensure_future(asyncio.to_thread(burst))
    await asyncio.wait_for(first_reply.wait(), 10)
    bystander.send("ping")
    await bystander.expect("pong", timeout=20)
    answered = time.monotonic()
    last_reply = await flood
    assert answered < last_reply, "the bystander waited for the whole burst"
