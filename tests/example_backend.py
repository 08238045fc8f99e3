"""examples/chat_backend.py as a process, for the tests that run it next to a gateway."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.helpers import ROOT

SECRET = "example-hook-secret"


@dataclass
class ExampleBackend:
    port: int
    db: str

    def url(self, hook: str) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/{hook}"

    def gateway_env(self) -> dict[str, str]:
        """The gateway settings of the README's "Your backend" quick start."""
        return {
            "HOOK_SECRET": SECRET,
            "ROOM_ACCESS": "hook",
            **{f"{hook.upper()}_HOOK_URL": self.url(hook) for hook in ("connect", "join", "publish", "rpc")},
        }


@contextmanager
def example_backend(folder: str) -> Iterator[ExampleBackend]:
    db = os.path.join(folder, "chat.db")
    proc = subprocess.Popen(
        [sys.executable, "examples/chat_backend.py", "--port", "0", "--db", db, "--secret", SECRET],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "the example backend printed nothing within 20 s"
        first = proc.stdout.readline()  # printed once it listens
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
        assert found, f"the example backend did not start: {first!r}"
        yield ExampleBackend(int(found[1]), db)
    finally:
        proc.terminate()
        proc.wait(10)
