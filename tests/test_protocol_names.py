"""The protocol's names are written once (schemas/protocol.py); the Python SDK, the JavaScript
client (client-js/src/protocol.ts) and the demo page carry their own copies (they ship without the
server) and must agree with it."""

from __future__ import annotations

import os
import re

from realtime_gateway_client import sdk

from handlers.demo import STATIC_DIR
from schemas.protocol import CLIENT_TYPES, CLOSE_CODES, CLOSE_TOKEN_EXPIRED, ERROR_CODES, SERVER_TYPES, Retry
from tests.helpers import ROOT

JS_ACTIONS = {Retry.RECONNECT: "retry", Retry.REFRESH: "refresh", Retry.GIVE_UP: "give_up"}


def demo_js() -> str:
    with open(os.path.join(STATIC_DIR, "demo.js"), encoding="utf-8") as fh:
        return fh.read()


def test_the_sdk_gives_up_exactly_where_the_protocol_says_so():
    give_up = {code for code, close in CLOSE_CODES.items() if close.retry is Retry.GIVE_UP}
    assert set(sdk.FATAL_CLOSE_CODES) == give_up
    assert sdk.CLOSE_TOKEN_EXPIRED == CLOSE_TOKEN_EXPIRED
    assert CLOSE_CODES[CLOSE_TOKEN_EXPIRED].retry is Retry.REFRESH


def test_the_demo_page_knows_every_close_and_error_code():
    block = re.search(r"const CLOSE_TEXT = \{(.*?)\};", demo_js(), re.S)
    assert block is not None
    texts = {int(code) for code in re.findall(r"(\d{4}): \"", block[1])}
    assert texts >= set(CLOSE_CODES), f"demo.js has no text for close {set(CLOSE_CODES) - texts}"
    errors = re.search(r"const ERROR_TEXT = \{(.*?)\};", demo_js(), re.S)
    assert errors is not None
    assert set(re.findall(r"(\w+): \"", errors[1])) == set(ERROR_CODES)


def test_the_javascript_client_has_the_protocols_names_and_close_actions():
    with open(os.path.join(ROOT, "client-js", "src", "protocol.ts"), encoding="utf-8") as fh:
        source = fh.read()

    def names(constant: str) -> tuple[str, ...]:
        found = re.search(rf"export const {constant} = \[(.*?)\] as const;", source, re.S)
        assert found is not None, constant
        return tuple(re.findall(r'"(\w+)"', found[1]))

    assert names("CLIENT_TYPES") == CLIENT_TYPES
    assert names("SERVER_TYPES") == SERVER_TYPES
    assert names("ERROR_CODES") == ERROR_CODES
    table = re.search(r"export const CLOSE_CODES[^=]*= \{(.*?)\n\};", source, re.S)
    assert table is not None
    rows = re.findall(r'(\d{4}): \{ reason: "[^"]*", action: "(\w+)" \}', table[1])
    actions = {int(code): action for code, action in rows}
    assert actions == {code: JS_ACTIONS[close.retry] for code, close in CLOSE_CODES.items()}
