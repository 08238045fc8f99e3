"""Every private Tornado name the gateway relies on (handlers/tornado_private.py) still exists with
the shape it relies on. A Tornado upgrade that changes one fails here before anything subtler does."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
import tornado
from tornado.httpserver import HTTPServer
from tornado.util import _websocket_mask
from tornado.web import Application
from tornado.websocket import WebSocketHandler, WebSocketProtocol13, _WebSocketParams

from handlers.tornado_private import PRIVATE, Private


def _owner(path: str) -> Any:
    try:
        return importlib.import_module(path)
    except ImportError:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)


def _instance_attributes(owner: Any) -> set[str]:
    """What a fresh instance of `owner` has: built where that is cheap, else read from the source
    of every method that assigns `self.<name>`."""
    if owner is WebSocketProtocol13:
        return set(vars(WebSocketProtocol13(object(), False, _WebSocketParams())))  # type: ignore[arg-type]
    if owner.__name__ == "TCPServer":
        return set(vars(HTTPServer(Application())))
    source = inspect.getsource(owner)
    return {name for name in ("_reason", "_finished") if f"self.{name} =" in source}


@pytest.mark.parametrize("item", PRIVATE, ids=[f"{p.owner.rsplit('.', 1)[-1]}.{p.name}" for p in PRIVATE])
def test_each_private_name_is_there(item: Private) -> None:
    owner = _owner(item.owner)
    if item.kind in ("replaced", "called", "module"):
        assert hasattr(owner, item.name), f"{item.owner}.{item.name} ({item.used_in}: {item.why})"
    else:
        assert item.name in _instance_attributes(owner), f"{item.owner}.{item.name} ({item.used_in}: {item.why})"


def test_the_list_names_what_the_code_uses() -> None:
    """Each entry is still used where it says, and the files that use private names list them all."""
    for item in PRIVATE:
        with open(item.used_in, encoding="utf-8") as fh:
            assert item.name in fh.read(), f"{item.name} is listed for {item.used_in}, which no longer uses it"


def test_the_shapes_the_gateway_relies_on() -> None:
    assert inspect.iscoroutinefunction(WebSocketProtocol13._receive_frame)
    assert "self._receive_frame()" in inspect.getsource(WebSocketProtocol13._receive_frame_loop)
    assert inspect.iscoroutinefunction(WebSocketProtocol13._read_bytes)
    assert list(inspect.signature(WebSocketProtocol13._read_bytes).parameters) == ["self", "n"]
    assert list(inspect.signature(WebSocketProtocol13._run_callback).parameters)[:2] == ["self", "callback"]
    assert list(inspect.signature(WebSocketProtocol13.__init__).parameters) == [
        "self",
        "handler",
        "mask_outgoing",
        "params",
    ]
    assert set(inspect.signature(_WebSocketParams).parameters) >= {"ping_interval", "ping_timeout", "max_message_size"}
    assert list(inspect.signature(WebSocketHandler._detach_stream).parameters) == ["self"]
    assert "_detach_stream()" in inspect.getsource(WebSocketProtocol13._accept_connection)
    assert _websocket_mask(b"\x01\x02\x03\x04", b"\x01\x02\x03\x04\x01") == b"\x00\x00\x00\x00\x00"
    assert "remote_ip" in inspect.getsource(_owner("tornado.httpserver._HTTPRequestContext").__init__)
    assert tornado.version_info[:2] == (6, 5), "review handlers/tornado_private.py against the new Tornado"


def test_the_accept_loop_finds_tcpservers_socket_tables() -> None:
    """handlers/http_server.py registers its listening sockets where TCPServer.stop() looks."""
    from tornado.tcpserver import TCPServer

    server = HTTPServer(Application())
    assert isinstance(server._sockets, dict) and isinstance(server._handlers, dict)
    stop = inspect.getsource(TCPServer.stop)
    assert "self._handlers.pop(fd)()" in stop and "self._sockets.items()" in stop
