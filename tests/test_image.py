"""The container image, built from the Dockerfile by buildah and run by podman (scripts/image.sh):
it serves with a secret, refuses to start without one unless DEV asks for it, reports healthy through
its own HEALTHCHECK, drains on SIGTERM, and carries no pip. Needs root for apt on a fresh machine."""

from __future__ import annotations

import functools
import json
import os
import re
import resource
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.helpers import ROOT, SECRET, free_port, token

SCRIPT = os.path.join(ROOT, "scripts", "image.sh")
WAIT = 30.0


@functools.cache
def _podman() -> tuple[str, ...]:
    return tuple(subprocess.run([SCRIPT, "podman"], capture_output=True, text=True, check=True).stdout.split())


def wait_status(url: str, want: int = 200) -> int:
    """Poll `url` until it answers `want` or WAIT passes; the last status seen."""
    deadline = time.monotonic() + WAIT
    while (seen := status(url)) != want and time.monotonic() < deadline:
        time.sleep(0.1)
    return seen


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if not shutil.which("apt-get") and not shutil.which("buildah"):
        unavailable("buildah is not installed and there is no apt-get to install it")
    if os.geteuid() != 0:
        unavailable("building the image here needs root (buildah and podman storage, apt)")
    done = subprocess.run([SCRIPT, "build"], capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr
    yield done.stdout.strip().splitlines()[-1]


def limits() -> list[str]:
    """This process may not raise its own limits: ask for no more than it has (podman's default asks)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ["--ulimit", f"nofile={hard}:{hard}", "--ulimit", "nproc=32768:32768"]


def run(image: str, *args: str, env: dict[str, str], name: str | None = None, detach: bool = False):
    """As the chart runs it: read-only root, a tmpfs /tmp. A named container stays until removed."""
    argv = [*_podman(), "run", "--network", "host", "--read-only", "--tmpfs", "/tmp", *limits()]
    if not name:
        argv.append("--rm")
    if name:
        argv += ["--name", name]
    if detach:
        argv.append("-d")
    for key, value in env.items():
        argv += ["-e", f"{key}={value}"]
    return subprocess.run([*argv, image, *args], capture_output=True, text=True, timeout=120, check=False)


def status(url: str) -> int:
    """The HTTP status, or 0 while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_the_base_is_pinned_by_digest():
    dockerfile = Path(ROOT, "Dockerfile").read_text()
    found = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert found is not None
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", found[1])


def test_without_a_secret_it_exits_2_unless_dev_is_asked_for(image):
    refused = run(image, env={"PORT": str(free_port())})
    assert refused.returncode == 2, refused.stdout + refused.stderr
    # podman's own complaints (no systemd here for health timers) are not the container's output.
    lines = [ln for ln in refused.stderr.strip().splitlines() if not ln.startswith("time=")]
    assert len(lines) == 1 and "REQUIRE_SECRET" in lines[0], refused.stderr
    name = f"rtg-dev-{os.getpid()}"
    port = free_port()
    started = run(image, env={"PORT": str(port), "DEV": "true"}, name=name, detach=True)
    assert started.returncode == 0, started.stderr
    try:
        assert wait_status(f"http://127.0.0.1:{port}/healthz") == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dev/token?sub=tried", timeout=3) as resp:
            assert json.load(resp)["token"]
    finally:
        subprocess.run([*_podman(), "rm", "--force", name], capture_output=True, check=False)


def test_it_serves_reports_healthy_and_drains(image):
    import asyncio

    from tests.helpers import Client

    name = f"rtg-{os.getpid()}"
    port = free_port()
    env = {"PORT": str(port), "JWT_SECRET": SECRET, "DRAIN_DELAY": "0", "DRAIN_WINDOW": "0"}
    started = run(image, env=env, name=name, detach=True)
    assert started.returncode == 0, started.stderr
    podman = _podman()
    try:
        assert wait_status(f"http://127.0.0.1:{port}/readyz") == 200
        assert status(f"http://127.0.0.1:{port}/healthz") == 200
        assert status(f"http://127.0.0.1:{port}/dev/token?sub=x") == 404  # a real secret: no dev tokens

        async def chat() -> None:
            client = await Client.connect(f"ws://127.0.0.1:{port}/", token("in-a-container"))
            client.send("ping")
            await client.expect("pong")
            client.close()

        asyncio.run(chat())
        # Its own HEALTHCHECK (bash /dev/tcp, no Python), run as the container engine runs it.
        health = subprocess.run([*podman, "healthcheck", "run", name], capture_output=True, text=True, check=False)
        assert health.returncode == 0, health.stdout + health.stderr
        who = subprocess.run([*podman, "exec", name, "id", "-u"], capture_output=True, text=True, check=False)
        assert who.stdout.strip() == "10001"
        pip = subprocess.run(
            [*podman, "exec", name, "python", "-c", "import pip"], capture_output=True, text=True, check=False
        )
        assert pip.returncode != 0 and "No module named 'pip'" in pip.stderr
        stopped = subprocess.run([*podman, "stop", "-t", "30", name], capture_output=True, text=True, check=False)
        assert stopped.returncode == 0, stopped.stderr
    finally:
        logs = subprocess.run([*podman, "logs", name], capture_output=True, text=True, check=False)
        subprocess.run([*podman, "rm", "--force", name], capture_output=True, check=False)
    assert '"stopped"' in logs.stderr + logs.stdout, "SIGTERM drained and the process exited on its own"
