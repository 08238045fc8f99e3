"""/demo and /dev/token as served by a real `python server.py` process, in each mode."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from handlers.demo import STATIC_DIR
from tests.conftest import unavailable
from tests.helpers import ROOT, SECRET, GatewayProcess, spawn_server

CLIENT_DIR = os.path.join(STATIC_DIR, "client")
LOCAL = ("--port", "0", "--host", "127.0.0.1", "--drain-delay", "0", "--drain-window", "0")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with _opener.open(url, timeout=5) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def servers() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for proc in started:
        proc.kill()


def test_dev_mode_serves_the_page_and_dev_tokens(servers):
    servers.append(srv := spawn_server(*LOCAL))
    status, headers, body = get(f"{srv.http}/demo?name=alice")  # the page itself, no redirect
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script type="module" src="/demo/demo.js"' in body
    status, headers, body = get(f"{srv.http}/demo/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for asset, kind in (("demo.js", "javascript"), ("client/index.js", "javascript"), ("demo.css", "text/css")):
        status, headers, _ = get(f"{srv.http}/demo/{asset}")
        assert status == 200 and kind in headers["Content-Type"], asset
    status, _, body = get(f"{srv.http}/dev/token?sub=alice")
    assert status == 200 and json.loads(body)["sub"] == "alice"
    status, _, body = get(f"{srv.http}/dev/token?sub=not%20ok")
    assert status == 400 and "sub must be" in json.loads(body)["error"]


def test_no_demo_turns_the_page_off(servers):
    servers.append(srv := spawn_server(*LOCAL, "--no-demo"))
    for path in ("/demo", "/demo/", "/demo/demo.js", "/demo/index.html"):
        assert get(f"{srv.http}{path}")[0] == 404, path
    assert get(f"{srv.http}/healthz")[0] == 200


def test_demo_env_false_turns_the_page_off(servers):
    servers.append(srv := spawn_server(*LOCAL, env={"DEMO": "false"}))
    assert get(f"{srv.http}/demo/")[0] == 404


def test_dev_token_is_404_with_a_configured_secret(servers):
    servers.append(srv := spawn_server(*LOCAL, env={"JWT_DEV": SECRET}))
    assert get(f"{srv.http}/dev/token?sub=alice")[0] == 404
    assert get(f"{srv.http}/demo/")[0] == 200, "the page stays: it lets the user paste a token"


def scripts() -> dict[str, str]:
    """The page's script and the client it imports."""
    names = ["demo.js"] + [f"client/{name}" for name in sorted(os.listdir(CLIENT_DIR))]
    out = {}
    for name in names:
        with open(os.path.join(STATIC_DIR, name), encoding="utf-8") as fh:
            out[name] = fh.read()
    return out


def test_page_never_builds_html_from_strings():
    """The page escapes user content by never parsing strings as HTML; CSP forbids inline code."""
    for name, script in scripts().items():
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in script, f"{sink} in {name}"
    with open(os.path.join(STATIC_DIR, "index.html"), encoding="utf-8") as fh:
        page = fh.read()
    assert not re.search(r"<script(?![^>]*\bsrc=)", page), "no inline script"
    assert not re.search(r"\son[a-z]+=", page), "no inline event handlers"
    assert "<style" not in page and "http://" not in page and "https://" not in page, "no inline CSS, no CDN"


def test_page_loads_the_client_as_built_from_client_js():
    """handlers/static/client/ is client-js's build output, committed so the gateway serves the
    page without Node; `scripts/node.sh demo` refreshes it."""
    dist = os.path.join(ROOT, "client-js", "dist")
    if not os.path.isfile(os.path.join(dist, "index.js")):
        unavailable("client-js is not built (scripts/node.sh ensure)")
    built = {name: _read(os.path.join(dist, name)) for name in os.listdir(dist) if name.endswith(".js")}
    copied = {name: _read(os.path.join(CLIENT_DIR, name)) for name in os.listdir(CLIENT_DIR)}
    assert copied == built, "handlers/static/client/ is not the current build: run scripts/node.sh demo"
    assert 'from "./client/index.js"' in scripts()["demo.js"]


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()
