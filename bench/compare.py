"""Put the runs of several `bench.fanout --json` files side by side, under labels of your choice.

    python -m bench.compare before=a1.json,a2.json after=b1.json,b2.json

For comparisons that one bench.fanout invocation cannot interleave by itself, such as the same
target in two checkouts (run each checkout's `python -m bench.fanout --json ...` in turn,
alternating). Every target of every file is listed under `LABEL` (or `LABEL/target` when a file
holds several targets), with the usual run table and medians-based ratios against the first label.
The files must come from the same scenario (clients, rooms, messages, rate); that is checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench import fanout

SCENARIO = ("clients", "rooms", "messages", "size", "rate", "window", "join", "client_procs", "pin")


def load(groups: list[str]) -> tuple[argparse.Namespace, dict[str, list[dict[str, Any]]]]:
    opts: argparse.Namespace | None = None
    by_label: dict[str, list[dict[str, Any]]] = {}
    for group in groups:
        label, sep, files = group.partition("=")
        if not sep or not label or not files:
            raise SystemExit(f"expected LABEL=FILE[,FILE...], got {group!r}")
        for name in files.split(","):
            doc = json.loads(Path(name).read_text())
            these = argparse.Namespace(**doc["options"])
            if opts is None:
                opts = these
            else:
                for key in SCENARIO:
                    if getattr(opts, key) != getattr(these, key):
                        raise SystemExit(f"{name}: {key}={getattr(these, key)!r}, not {getattr(opts, key)!r}")
            targets: dict[str, list[dict[str, Any]]] = doc["results"]
            for target, results in targets.items():
                key = label if len(targets) == 1 else f"{label}/{target}"
                for r in results:
                    by_label.setdefault(key, []).append({**r, "target": key})
    if opts is None:
        raise SystemExit("no files")
    return opts, by_label


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("groups", nargs="+", metavar="LABEL=FILE[,FILE...]")
    args = p.parse_args(argv)
    opts, by_label = load(args.groups)
    header = fanout.HEADER if opts.messages > 0 else fanout.CAP_HEADER
    print(header)
    print("|---" * (header.count(" | ") + 1) + "|")
    for results in by_label.values():
        for r in results:
            print(fanout.row(r, opts))
    lines = fanout.ratios(by_label, opts.messages <= 0)
    if lines:
        print()
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
