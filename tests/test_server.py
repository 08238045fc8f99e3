"""server.py as a real process: configuration errors, the dev token, probes, logs, SIGTERM drain."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import ROOT, SECRET, Client, refused_status, spawn_server, token, wait_for


def run_bad(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "server.py", *args],
        cwd=ROOT,
        env=full_env,
        text=True,
        capture_output=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--port", "abc"], {}, "--port"),
        (["--port", "70000"], {}, "--port"),
        ([], {"PORT": "x"}, "PORT"),
        (["--no-such-flag"], {}, "unrecognized"),
        (["--workers", "2"], {}, "Redis"),
        (["--jwt-secret", "short"], {}, "32 bytes"),
        (["--room-access", "maybe"], {}, "ROOM-ACCESS".lower()),
        ([], {"RATE_LIMIT": "-1"}, "RATE_LIMIT"),
        (["--jwt-algorithms", "RS256"], {}, "JWT_PUBLIC_KEY"),
        (
            ["--redis-host", "127.0.0.1", "--redis-tls-ca", "/nonexistent/ca.pem"],
            {},
            "server.py: error: REDIS_TLS_CA: no such file: /nonexistent/ca.pem",
        ),
        (
            ["--redis-host", "127.0.0.1", "--redis-cluster-nodes", "127.0.0.1:7000"],
            {},
            "server.py: error: REDIS_HOST and REDIS_CLUSTER_NODES are exclusive: set one",
        ),
        (["--api-key", ""], {}, "API_KEY is empty"),
        ([], {"REQUIRE_SECRET": "true"}, "JWT_SECRET is not set and REQUIRE_SECRET is on"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_2(args, env, needle):
    result = run_bad(*args, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert needle.lower() in lines[0].lower()
    assert "Traceback" not in result.stderr


def test_port_in_use_is_exit_2():
    first = spawn_server("--port", "0", env={"JWT_DEV": SECRET})
    try:
        result = run_bad("--port", str(first.port), "--host", "127.0.0.1", env={"JWT_DEV": SECRET})
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        first.kill()


def _get(url: str) -> tuple[int, dict[str, object] | str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        status = exc.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


@pytest.mark.gen_test(timeout=30)
async def test_without_a_secret_a_dev_token_is_printed_and_dev_endpoint_served_on_loopback():
    proc = spawn_server("--port", "0")  # no HOST: a generated secret binds loopback only
    try:
        await wait_for(lambda: any("JWT_SECRET is not set" in line for line in proc.lines), what="dev warning")
        assert proc.logged("listening")[0]["host"] == "127.0.0.1"
        loop = asyncio.get_running_loop()
        status, body = await loop.run_in_executor(None, _get, f"{proc.http}/dev/token?sub=tab1")
        assert status == 200 and isinstance(body, dict)
        client = await Client.connect(proc.url, str(body["token"]))
        state = await client.join("lobby")
        assert state["payload"]["members"][0]["userId"] == "tab1"
        client.close()
    finally:
        proc.signal(signal.SIGKILL)
        out, _ = proc.proc.communicate(timeout=10)
    printed = [line.strip() for line in out.splitlines() if line.strip().startswith("eyJ")]
    assert printed, out
    assert not any(printed[0] in line for line in proc.lines), "the dev token must not be in the log"


@pytest.mark.gen_test(timeout=30)
async def test_dev_token_is_404_with_a_configured_secret():
    proc = spawn_server("--port", "0", "--host", "127.0.0.1", env={"JWT_DEV": SECRET})
    try:
        loop = asyncio.get_running_loop()
        status, _ = await loop.run_in_executor(None, _get, f"{proc.http}/dev/token?sub=x")
        assert status == 404
        assert not any("JWT_DEV is not set" in line for line in proc.lines)
        status, body = await loop.run_in_executor(None, _get, f"{proc.http}/healthz")
        assert status == 200
        status, body = await loop.run_in_executor(None, _get, f"{proc.http}/readyz")
        assert status == 200 and isinstance(body, dict) and body["status"] == "ready"
    finally:
        proc.kill()


@pytest.mark.gen_test(timeout=30)
async def test_logs_are_json_lines_without_tokens():
    proc = spawn_server("--port", "0", "--host", "127.0.0.1", "--log-level", "debug", env={"JWT_DEV": SECRET})
    good = token("logger", ttl=600)
    try:
        client = await Client.connect(proc.url, good)
        await client.join("r")
        client.send("message", {"roomId": "r", "content": "top secret words"})
        await client.expect("ack")
        client.send_raw("{broken")
        await client.expect_error("invalid_json")
        bad = token("x", secret="another-secret-that-is-long-enough-000000")
        status, _ = await refused_status(f"{proc.url}?token={bad}")
        assert status == 401
        status, _ = await refused_status(proc.url, headers={"Authorization": f"Bearer {bad}"})
        assert status == 401
        encoded = "".join(f"%{b:02X}" for b in b"token")  # ?%74%6F%6B%65%6E=... is still the token
        status, _ = await refused_status(f"{proc.url}?{encoded}={bad}")
        assert status == 401
        client.close()
        await wait_for(lambda: any('"upgrade refused"' in line for line in proc.lines), what="refusal logged")
    finally:
        proc.signal(signal.SIGTERM)
        proc.wait(30)
    text = "".join(proc.lines)
    assert proc.lines
    for line in proc.lines:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "event", "instance"} <= set(entry)
    assert good not in text and bad not in text
    assert "eyJ" not in text
    assert "top secret words" not in text
    upgrades = [json.loads(line) for line in proc.lines if '"status": 101' in line or '"status":101' in line]
    assert upgrades and all(entry["path"] == "/" for entry in upgrades)  # the path only, never the query


@pytest.mark.gen_test(timeout=60)
async def test_sigterm_drains_with_1012_and_exits_0():
    proc = spawn_server(
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--drain-delay",
        "1",
        "--drain-window",
        "2",
        env={"JWT_DEV": SECRET},
    )
    loop = asyncio.get_running_loop()
    try:
        clients = [await Client.connect(proc.url, token(f"u{i}")) for i in range(4)]
        for c in clients:
            await c.join("r")
        started = time.monotonic()
        proc.signal(signal.SIGTERM)

        async def draining() -> bool:
            status, _ = await loop.run_in_executor(None, _get, f"{proc.http}/readyz")
            return status == 503

        await wait_for(draining, what="readiness 503 after SIGTERM", timeout=3)
        status, body = await refused_status(f"{proc.url}?token={token('late')}")
        assert status == 503 and body["error"]
        codes = [await c.wait_closed(timeout=10) for c in clients]
        assert codes == [1012] * 4
        assert time.monotonic() - started < 1 + 2 + 3
        code = await loop.run_in_executor(None, proc.wait, 20)
        assert code == 0
        refusals = [r for r in proc.logged("http request") if r.get("status") == 503]
        assert refusals and all(r["level"] == "info" for r in refusals), "a drain refusal is not an error"
    finally:
        proc.kill()


@pytest.mark.gen_test(timeout=30)
async def test_second_signal_exits_at_once():
    proc = spawn_server("--port", "0", "--host", "127.0.0.1", "--drain-delay", "30", env={"JWT_DEV": SECRET})
    loop = asyncio.get_running_loop()
    try:
        client = await Client.connect(proc.url, token("stays"))
        await client.join("r")
        proc.signal(signal.SIGTERM)
        await wait_for(lambda: any('"draining"' in line for line in proc.lines), what="drain started")
        started = time.monotonic()
        proc.signal(signal.SIGINT)
        code = await loop.run_in_executor(None, proc.wait, 10)
        assert code == 0
        assert time.monotonic() - started < 5  # far less than the 30 s drain delay
    finally:
        proc.kill()


@pytest.mark.gen_test(timeout=30)
async def test_required_secret_gives_way_to_an_explicit_dev_mode():
    """The container image sets REQUIRE_SECRET: without a secret it starts only when DEV is asked for,
    and then hands out dev tokens like `make run` does."""
    proc = spawn_server("--port", "0", "--host", "127.0.0.1", env={"REQUIRE_SECRET": "true", "DEV": "true"})
    try:
        status, body = _get(f"{proc.http}/dev/token?sub=tried")
        assert status == 200 and isinstance(body, dict)
        tok = str(body["token"])
        client = await Client.connect(proc.url, tok)
        client.send("ping")
        await client.expect("pong")
        client.close()
    finally:
        proc.kill()


@pytest.mark.gen_test(timeout=30)
async def test_jwt_secret_is_the_secrets_name_and_an_explicit_host_is_kept():
    proc = spawn_server("--port", "0", env={"JWT_SECRET": SECRET, "HOST": "127.0.0.2"})
    try:
        assert proc.logged("listening")[0]["host"] == "127.0.0.2"
        assert not any("is not set" in line for line in proc.lines)
        client = await Client.connect(f"ws://127.0.0.2:{proc.port}/", token("named"))
        client.send("ping")
        await client.expect("pong")
        client.close()
    finally:
        proc.kill()


@pytest.mark.gen_test(timeout=30)
async def test_ctrl_c_closes_every_socket_with_1012_at_once():
    """Someone at a terminal: no DRAIN_DELAY, no DRAIN_WINDOW spread (both huge here), and the log
    says that a second Ctrl-C exits without waiting."""
    args = ("--port", "0", "--host", "127.0.0.1", "--drain-delay", "600", "--drain-window", "600")
    proc = spawn_server(*args, env={"JWT_SECRET": SECRET})
    loop = asyncio.get_running_loop()
    try:
        clients = [await Client.connect(proc.url, token(f"tab{i}")) for i in range(3)]
        for c in clients:
            await c.join("r")
        proc.signal(signal.SIGINT)
        assert [await c.wait_closed(timeout=10) for c in clients] == [1012] * 3
        assert await loop.run_in_executor(None, proc.wait, 10) == 0
        (draining,) = proc.logged("draining")
        assert draining["delay"] == 0 and draining["window"] == 0
        assert "again" in draining["hint"]
    finally:
        proc.kill()


@pytest.mark.gen_test(timeout=30)
async def test_ctrl_c_on_an_idle_server_skips_the_drain_delay():
    proc = spawn_server("--port", "0", "--drain-delay", "30", env={"JWT_SECRET": SECRET})
    loop = asyncio.get_running_loop()
    try:
        proc.signal(signal.SIGINT)
        code = await loop.run_in_executor(None, proc.wait, 10)  # far less than the 30 s delay
        assert code == 0
    finally:
        proc.kill()


@pytest.mark.gen_test(timeout=30)
async def test_uvloop_runs_the_gateway_when_asked():
    proc = spawn_server("--port", "0", "--host", "127.0.0.1", "--uvloop", env={"JWT_DEV": SECRET})
    try:
        assert [r["loop"] for r in proc.logged("listening")] == ["uvloop"]
        alice = await Client.connect(f"ws://127.0.0.1:{proc.port}/", token("alice"))
        await alice.join("r")
        alice.send("message", {"roomId": "r", "content": "on uvloop"})
        got = await alice.expect("message")
        assert got["payload"]["content"] == "on uvloop"
        alice.close()
    finally:
        proc.kill()
    plain = spawn_server("--port", "0", "--host", "127.0.0.1", env={"JWT_DEV": SECRET})
    try:
        assert [r["loop"] for r in plain.logged("listening")] == ["asyncio"]
    finally:
        plain.kill()


def test_the_listening_socket_has_the_configured_backlog() -> None:
    """LISTEN_BACKLOG reaches listen(2): Tornado's default of 128 dropped a reconnect storm's SYNs
    (BENCHMARKS.md, "Reconnect storm"). `ss` reads the socket's backlog from the kernel."""
    import server
    from tests.helpers import test_settings as settings_for

    for backlog in (77, 4096):
        sockets = server._bind(settings_for(listen_backlog=backlog), 0)
        try:
            port = sockets[0].getsockname()[1]
            listed = subprocess.run(
                ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
            ).stdout
            assert [line.split()[2] for line in listed.splitlines()] == [str(backlog)]
        finally:
            for sock in sockets:
                sock.close()
