"""The gateway's frame reader (handlers/protocol.py) subclasses Tornado's WebSocketProtocol13 and
uses some of its private members. This fails if a Tornado upgrade changes them, before anything
subtler does."""

from __future__ import annotations

import inspect

import tornado
from tornado.util import _websocket_mask
from tornado.websocket import WebSocketHandler, WebSocketProtocol13, _WebSocketParams

from handlers.protocol import TORNADO_PRIVATE


def test_the_private_members_we_use_are_there_with_their_signatures():
    for name in TORNADO_PRIVATE:
        assert hasattr(WebSocketProtocol13, name), name
    assert inspect.iscoroutinefunction(WebSocketProtocol13._receive_frame)
    assert inspect.iscoroutinefunction(WebSocketProtocol13._read_bytes)
    assert list(inspect.signature(WebSocketProtocol13._read_bytes).parameters) == ["self", "n"]
    assert list(inspect.signature(WebSocketProtocol13._write_frame).parameters)[:4] == ["self", "fin", "opcode", "data"]
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


def test_the_instance_attributes_we_use_are_set_by_the_constructor():
    protocol = WebSocketProtocol13(object(), False, _WebSocketParams())  # type: ignore[arg-type]
    for attribute in ("_message_bytes_in", "_wire_bytes_in", "_received_pong", "params"):
        assert hasattr(protocol, attribute), attribute
    assert tornado.version_info[:2] == (6, 5), "review handlers/protocol.py against the new Tornado"


def test_the_accept_loop_finds_tcpservers_socket_tables():
    """handlers/http_server.py registers its listening sockets where TCPServer.stop() looks."""
    from tornado.httpserver import HTTPServer
    from tornado.tcpserver import TCPServer
    from tornado.web import Application

    server = HTTPServer(Application())
    assert isinstance(server._sockets, dict) and isinstance(server._handlers, dict)
    stop = inspect.getsource(TCPServer.stop)
    assert "self._handlers.pop(fd)()" in stop and "self._sockets.items()" in stop
