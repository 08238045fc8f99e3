"""Every name of Tornado's that the gateway relies on without it being public API, in one place:
who owns it, how it is used, where and why. tests/test_tornado_contract.py checks each entry
against the installed Tornado, so an upgrade that changes one fails there before anything subtler
does. The choice to keep Tornado's reader with the gateway's own frame parser (instead of
detaching after the handshake and driving a sans-I/O codec) is docs/architecture.md, "Tornado's
private surface".

Kinds: `replaced` (the gateway overrides it and Tornado calls it), `called`, `read`, `written`
(instance attributes), `module` (a module-private function or class).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Private:
    owner: str  # dotted path of the class or module
    name: str
    kind: str
    used_in: str
    why: str


PRIVATE: tuple[Private, ...] = (
    Private(
        "tornado.websocket.WebSocketProtocol13",
        "_receive_frame",
        "replaced",
        "handlers/protocol.py",
        "the frame reader: close codes the client can read, control frames charged to the limits",
    ),
    Private("tornado.websocket.WebSocketProtocol13", "_read_bytes", "called", "handlers/protocol.py", "reads a frame"),
    Private(
        "tornado.websocket.WebSocketProtocol",
        "_run_callback",
        "called",
        "handlers/protocol.py",
        "on_message with Tornado's error handling",
    ),
    Private(
        "tornado.websocket.WebSocketProtocol13",
        "_received_pong",
        "written",
        "handlers/protocol.py",
        "keepalive: a pong arrived since the last ping",
    ),
    Private(
        "tornado.websocket.WebSocketProtocol13",
        "_message_bytes_in",
        "written",
        "handlers/protocol.py",
        "Tornado's own byte counters stay true",
    ),
    Private(
        "tornado.websocket.WebSocketProtocol13",
        "_wire_bytes_in",
        "written",
        "handlers/protocol.py",
        "Tornado's own byte counters stay true",
    ),
    Private(
        "tornado.websocket",
        "_WebSocketParams",
        "module",
        "handlers/protocol.py",
        "the protocol's constructor takes it (max message size)",
    ),
    Private("tornado.util", "_websocket_mask", "module", "handlers/protocol.py", "unmasks a client frame (C speedup)"),
    Private(
        "tornado.websocket.WebSocketHandler",
        "_detach_stream",
        "replaced",
        "handlers/socket.py",
        "detach() instead of seven per-connection method patches (1.5 KB each socket)",
    ),
    Private(
        "tornado.web.RequestHandler",
        "_request_summary",
        "replaced",
        "handlers/common.py",
        "Tornado's own log lines name the path, never the query (the token)",
    ),
    Private("tornado.web.RequestHandler", "_reason", "read", "handlers/common.py", "the status text of a JSON error"),
    Private("tornado.web.RequestHandler", "_finished", "read", "handlers/api.py", "prepare() already answered"),
    Private(
        "tornado.tcpserver.TCPServer",
        "_sockets",
        "written",
        "handlers/http_server.py",
        "the gateway's own accept loop registers its listeners where stop() closes them",
    ),
    Private(
        "tornado.tcpserver.TCPServer",
        "_handlers",
        "written",
        "handlers/http_server.py",
        "the accept loop's removal callbacks, called by stop()",
    ),
    Private(
        "tornado.httpserver",
        "_HTTPRequestContext",
        "module",
        "handlers/http_server.py",
        "its remote_ip is rewritten from TRUSTED_PROXIES before any handler reads it",
    ),
)
