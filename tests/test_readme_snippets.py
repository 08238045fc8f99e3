"""The README's Python and JavaScript snippets, run as written (only the port changes) from a folder
outside the repository, against a real gateway started like `make run` (a generated secret, so
`/dev/token` answers). Each must print the message it sent, echoed back by the gateway."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.helpers import ROOT, GatewayProcess, spawn_server

README = Path(ROOT, "README.md")
HERE = "127.0.0.1:3000"
WAIT = 30.0  # seconds a snippet may take to print its echo (a first import compiles bytecode)


def snippets(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", path.read_text(encoding="utf-8"), re.S | re.M)


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    proc = spawn_server("--port", "0", "--host", "127.0.0.1")  # no JWT_SECRET: as `make run`
    yield proc
    proc.kill()


def run_until_printed(argv: list[str], cwd: Path, expected: str, env: dict[str, str] | None = None) -> list[str]:
    """Run a snippet until it prints `expected` (then stop it); fail with its output otherwise."""
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )
    lines: list[str] = []
    seen = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.strip() == expected:
                seen.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + WAIT
    while not seen.is_set() and proc.poll() is None and time.monotonic() < deadline:
        seen.wait(0.05)
    proc.kill()
    proc.wait(10)
    reader.join(5)
    assert expected in lines, f"{argv[-1]} did not print {expected!r}; it printed:\n" + "\n".join(lines[-30:])
    return lines


def test_the_snippets_are_there():
    """The two snippets below are found, and each talks to `make run`'s address."""
    found = snippets(README, "python") + snippets(README, "js")
    assert len(found) == 2
    assert all(HERE in code for code in found)


def test_python_snippet_runs_from_anywhere(gateway, tmp_path):
    (code,) = snippets(README, "python")
    script = tmp_path / "chat.py"
    script.write_text(code.replace(HERE, f"127.0.0.1:{gateway.port}"), encoding="utf-8")
    # The venv's interpreter, as the README says (`.venv/bin/python chat.py`), outside the clone:
    # `import realtime_gateway_client` must work through the SDK's editable install, not the working directory.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run_until_printed([sys.executable, str(script)], tmp_path, "alice: hello", env)


def test_javascript_snippet_runs_on_this_node(gateway, tmp_path):
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed")
    package = Path(ROOT, "client-js")
    if not (package / "dist" / "index.js").exists() or not (package / "node_modules").exists():
        unavailable("client-js is not built (scripts/node.sh ensure)")
    (code,) = snippets(README, "js")
    # Installed as the README says, minus the tarball: the package folder under node_modules.
    scope = tmp_path / "node_modules" / "@realtime-gateway"
    scope.mkdir(parents=True)
    (scope / "client").symlink_to(package)
    script = tmp_path / "chat.mjs"
    script.write_text(code.replace(HERE, f"127.0.0.1:{gateway.port}"), encoding="utf-8")
    run_until_printed([node, str(script)], tmp_path, "alice: hello")
