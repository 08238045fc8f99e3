"""Managed Redis asks for TLS and an ACL user: a real redis-server with TLS only (its certificate
signed by a CA made in the test) and the default user switched off, and a Redis Cluster set up the
same way. Two gateways share each as the ACL user; a wrong password or an unknown CA is one line
and exit 2 (README.md, "Configuration")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from tornado.ioloop import IOLoop

from tests.conftest import private_cluster
from tests.helpers import RunningGateway, free_port, spawn_server
from tests.redis_support import PrivateRedis, cluster_overrides, server_args, unique_prefix
from tests.tls_support import TlsFiles, make_ca_and_server_cert

USER, PASSWORD = "gateway", "s3cret-for-tests"


class TlsRedis(PrivateRedis):
    def __init__(self, files: TlsFiles) -> None:
        tls_port = free_port()
        super().__init__(
            args=(
                "--port",
                "0",  # TLS only: a plain connection finds nobody
                "--tls-port",
                str(tls_port),
                "--tls-cert-file",
                str(files.cert),
                "--tls-key-file",
                str(files.key),
                "--tls-ca-cert-file",
                str(files.ca),
                "--tls-auth-clients",
                "no",
                "--user",
                "default",
                "off",
                "--user",
                USER,
                "on",
                f">{PASSWORD}",
                "~*",
                "&*",
                "+@all",
            ),
            probe=redis.Redis(
                host="127.0.0.1",
                port=tls_port,
                ssl=True,
                ssl_ca_certs=str(files.ca),
                username=USER,
                password=PASSWORD,
                socket_timeout=5,
                decode_responses=True,
            ),
        )
        self.tls_port = tls_port
        self.files = files


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    server = TlsRedis(make_ca_and_server_cert(tmp_path))
    server.start()
    yield server
    server.stop()


def tls_overrides(server: TlsRedis, prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "redis_host": "127.0.0.1",
        "redis_port": server.tls_port,
        "redis_prefix": prefix,
        "redis_connect_timeout": 3.0,
        "redis_tls": True,
        "redis_tls_ca": str(server.files.ca),
        "redis_username": USER,
        "redis_password": PASSWORD,
        **extra,
    }


@pytest.mark.gen_test(timeout=30)
async def test_two_gateways_share_a_tls_redis_as_an_acl_user(
    io_loop: IOLoop, make_gateway: Callable[..., Awaitable[RunningGateway]], tls_redis: TlsRedis
) -> None:
    prefix = unique_prefix()
    a = await make_gateway(**tls_overrides(tls_redis, prefix, instance_id="tls-a"))
    b = await make_gateway(**tls_overrides(tls_redis, prefix, instance_id="tls-b"))
    alice, bob = await a.client("alice"), await b.client("bob")
    await alice.join("vault")
    state = await bob.join("vault")
    assert {m["userId"] for m in state["payload"]["members"]} == {"alice", "bob"}  # presence in Redis

    alice.send("message", {"roomId": "vault", "content": "over TLS"})
    got = await bob.expect("message")
    assert got["payload"]["content"] == "over TLS" and got["payload"]["offset"] == 1  # the history's script

    assert tls_redis.probe is not None
    clients = cast("list[dict[str, Any]]", tls_redis.probe.client_list())
    ours = [c for c in clients if c.get("name", "").startswith(("rtg:", "rtg-sub:"))]
    assert {c["name"] for c in ours} >= {"rtg:tls-a", "rtg-sub:tls-a", "rtg:tls-b", "rtg-sub:tls-b"}
    assert {c["user"] for c in ours} == {USER}


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[str, TlsFiles]]:
    """A cluster speaking TLS only, with the ACL user and the default user off."""
    files = make_ca_and_server_cert(tmp_path)
    env = {
        "CLUSTER_TLS_CERT": str(files.cert),
        "CLUSTER_TLS_KEY": str(files.key),
        "CLUSTER_TLS_CA": str(files.ca),
        "CLUSTER_USER": USER,
        "CLUSTER_PASSWORD": PASSWORD,
    }
    with private_cluster("tls", **env) as seeds:
        yield seeds, files


@pytest.mark.gen_test(timeout=60)
async def test_two_gateways_share_a_tls_cluster_as_an_acl_user(
    tls_cluster: tuple[str, TlsFiles], make_gateway: Callable[..., Awaitable[RunningGateway]]
) -> None:
    """(`tls_cluster` first: it is set up before the gateways and torn down after them.)"""
    seeds, files = tls_cluster
    prefix = unique_prefix()
    login = {"redis_tls_ca": str(files.ca), "redis_username": USER, "redis_password": PASSWORD}
    a = await make_gateway(**cluster_overrides(seeds, prefix, instance_id="tlc-a", **login))
    b = await make_gateway(**cluster_overrides(seeds, prefix, instance_id="tlc-b", **login))
    alice, bob = await a.client("alice"), await b.client("bob")
    await alice.join("vault")
    state = await bob.join("vault")
    assert {m["userId"] for m in state["payload"]["members"]} == {"alice", "bob"}
    alice.send("message", {"roomId": "vault", "content": "over TLS, sharded"})
    got = await bob.expect("message")
    assert got["payload"]["content"] == "over TLS, sharded" and got["payload"]["offset"] == 1


def _start_fails(server: TlsRedis, *extra: str) -> str:
    gp = spawn_server(*server_args(server.tls_port, "--redis-connect-timeout", "1", *extra), wait_listening=False)
    _, err = gp.proc.communicate(timeout=20)
    assert gp.proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_wrong_password_an_unknown_ca_or_no_tls_is_one_line_and_exit_2(tls_redis: TlsRedis, tmp_path: Path) -> None:
    ca = str(tls_redis.files.ca)
    login = ("--redis-username", USER)
    line = _start_fails(tls_redis, "--redis-tls", "--redis-tls-ca", ca, *login, "--redis-password", "wrong")
    assert line.startswith("server.py: error: cannot reach Redis at 127.0.0.1:") and "AuthenticationError" in line, line
    other = make_ca_and_server_cert(tmp_path, "other")
    line = _start_fails(tls_redis, "--redis-tls-ca", str(other.ca), *login, "--redis-password", PASSWORD)
    assert "certificate verify failed" in line, line
    line = _start_fails(tls_redis, *login, "--redis-password", PASSWORD)  # plain TCP to a TLS port
    assert line.startswith("server.py: error: cannot reach Redis at 127.0.0.1:"), line
    assert PASSWORD not in line
