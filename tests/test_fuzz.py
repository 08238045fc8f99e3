"""Property-based fuzzing of the frame parser over a real socket: whatever arrives, the server
answers with well-formed frames (errors where due) and stays up."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import SECRET, GatewayProcess, RawWebSocket, spawn_server, token

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
types = st.sampled_from(["join", "leave", "message", "presence", "ping", "nope", ""]) | st.text(max_size=10)
rooms = st.sampled_from(["r", "lobby", "", "bad room", "x" * 200]) | st.text(max_size=20)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "roomId": rooms | json_values,
        "content": st.text(max_size=100) | json_values,
        "status": st.sampled_from(["online", "typing", "idle", "offline"]) | json_values,
        "attachments": json_values,
        "dedupeKey": st.text(max_size=20) | json_values,
    },
)
frames = st.fixed_dictionaries(
    {"type": types | json_values},
    optional={"payload": payloads | json_values, "requestId": st.text(max_size=80) | json_values},
)


@pytest.fixture(scope="module")
def server() -> Iterator[GatewayProcess]:
    proc = spawn_server(
        "--port",
        "0",
        "--host",
        "127.0.0.1",
        "--rate-limit",
        "100000",
        "--rate-burst",
        "100000",
        "--invalid-frame-limit",
        "100000",
        env={"JWT_DEV": SECRET},
    )
    yield proc
    proc.kill()


class Conn:
    """One raw connection reused across examples; reopened if a case legitimately closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.ws: RawWebSocket | None = None
        self.n = 0

    def get(self) -> RawWebSocket:
        if self.ws is None:
            self.ws = RawWebSocket(self.port, token("fuzzer"))
        return self.ws

    def roundtrip(self, send: object) -> list[dict[str, object]]:
        """Send one fuzz frame, then a ping; return every frame that came before the pong."""
        ws = self.get()
        self.n += 1
        marker = f"fuzz-{self.n}"
        if isinstance(send, bytes):
            ws.send_binary(send)
        else:
            assert isinstance(send, str)
            ws.send_text(send)
        ws.send_text(json.dumps({"type": "ping", "payload": {}, "requestId": marker}))
        seen: list[dict[str, object]] = []
        while True:
            frame = ws.recv_json(timeout=10)
            assert frame is not None, "server closed the socket on a fuzz frame"
            if frame["type"] == "pong" and frame.get("requestId") == marker:
                return seen
            seen.append(frame)


@pytest.fixture(scope="module")
def conn(server: GatewayProcess) -> Iterator[Conn]:
    c = Conn(server.port)
    yield c
    if c.ws is not None:
        c.ws.close()


ERROR_CODES = {"invalid_json", "invalid_frame", "unknown_type", "validation_failed", "not_in_room"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=frames)
def test_random_frames_get_valid_answers(conn, server, frame):
    answers = conn.roundtrip(json.dumps(frame))
    for answer in answers:
        if answer["type"] == "error":
            assert answer["payload"]["code"] in ERROR_CODES, answer
    assert server.proc.poll() is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300))
def test_random_text_is_invalid_json_or_an_answer(conn, server, text):
    answers = conn.roundtrip(text)
    assert len(answers) <= 2
    for answer in answers:
        assert answer["type"] in {
            "error",
            "room_update",
            "presence_state",
            "presence",
            "pong",
            "message",
            "ack",
        }
    assert server.proc.poll() is None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300))
def test_random_binary_is_invalid_frame(conn, server, data):
    answers = conn.roundtrip(data)
    assert [a["payload"]["code"] for a in answers] == ["invalid_frame"]
    assert server.proc.poll() is None
