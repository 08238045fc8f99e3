"""What one message costs in its sender's order queues (services/hub/ordering.py), with a dedupeKey
and nothing owed, the usual case: `turn`, `waits_for_others`, `finish`.

    python -m bench.sender_order [--messages 200000] [--repeat 5]

Prints the best of `--repeat` runs in nanoseconds per message. In-process, no sockets: compare two
trees in one sitting and quote the ratio (BENCHMARKS.md, "Noise").
"""

from __future__ import annotations

import argparse
import asyncio
import time

from services.hub.ordering import SenderOrder


async def per_message(messages: int) -> float:
    order = SenderOrder()
    started = time.perf_counter()
    for i in range(messages):
        turn = order.turn("room", f"key-{i & 1023}")
        turn.waits_for_others()
        await turn.finish()
    return (time.perf_counter() - started) / messages * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sender_order", description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    best = min(asyncio.run(per_message(args.messages)) for _ in range(args.repeat))
    print(f"{best:.0f} ns per message (best of {args.repeat} x {args.messages})")


if __name__ == "__main__":
    main()
