"""What framing a server frame costs: the gateway's writer (handlers/protocol.py `wire_frame`, one
frame built per broadcast and reused for every recipient) against a sans-I/O codec per connection
(the `websockets` library's protocol objects, wsproto). The write path is where a fan-out spends its
CPU (one inbound frame per hundreds of deliveries); docs/architecture.md, "Tornado's private surface",
records the decision this informs.

    .venv/bin/python -m bench.codecs [--reps 9]

Runs with the project's interpreter; websockets and wsproto come from the bench venv
(bench/requirements.txt, created on first use). Per-frame CPU, alternating rounds, medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import orjson

from bench.common import BENCH_VENV, ensure_bench_venv
from handlers.protocol import OP_TEXT, wire_frame

ROUND = 20_000


def _bench_packages() -> None:
    ensure_bench_venv()
    sys.path.extend(str(p) for p in BENCH_VENV.glob("lib/python3*/site-packages"))


def _payload(n: int) -> bytes:
    body = {"type": "message", "payload": {"id": f"0192-{n:06d}", "roomId": "general", "senderId": "alice"}}
    frame = orjson.dumps({**body, "payload": {**body["payload"], "content": "x" * 120, "offset": n}})
    return frame


def cases() -> dict[str, Callable[[int], None]]:
    from websockets.protocol import State
    from websockets.server import ServerProtocol
    from wsproto.connection import Connection, ConnectionType
    from wsproto.events import Message

    one = _payload(0)
    fresh = [_payload(n) for n in range(256)]  # more than wire_frame's cache: every frame built anew
    text = one.decode()

    def gateway_broadcast(n: int) -> None:
        for _ in range(n):
            wire_frame(OP_TEXT, one)

    def gateway_unicast(n: int) -> None:
        for i in range(n):
            wire_frame(OP_TEXT, fresh[i & 255])

    def websockets_codec(n: int) -> None:
        protocol = ServerProtocol(state=State.OPEN, max_size=65536)
        for _ in range(n):
            protocol.send_text(one)
            b"".join(protocol.data_to_send())

    def wsproto_codec(n: int) -> None:
        connection = Connection(ConnectionType.SERVER)
        for _ in range(n):
            connection.send(Message(data=text))

    assert wire_frame(OP_TEXT, one) == Connection(ConnectionType.SERVER).send(Message(data=text))
    return {
        "gateway wire_frame, broadcast (built once)": gateway_broadcast,
        "gateway wire_frame, unicast (built each time)": gateway_unicast,
        "websockets send_text + data_to_send": websockets_codec,
        "wsproto send(Message)": wsproto_codec,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.codecs")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    _bench_packages()
    runs = cases()
    took: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.reps):
        for name, run in runs.items():
            start = time.thread_time_ns()
            run(ROUND)
            took[name].append((time.thread_time_ns() - start) / ROUND)
    base = statistics.median(next(iter(took.values())))
    print(f"ns per ~200-byte text frame, median of {args.reps} alternating rounds of {ROUND:,}")
    for name, values in took.items():
        median = statistics.median(values)
        print(f"  {name:48s} {median:8.0f} ns  {median / base:5.2f}x")


if __name__ == "__main__":
    main()
