"""The protocol's names are written once (schemas/protocol.py); the Python SDK and the demo page
carry their own copies (they ship without the server) and must agree with it."""

from __future__ import annotations

import os
import re

from client import sdk
from handlers.demo import STATIC_DIR
from schemas.protocol import CLOSE_CODES, CLOSE_TOKEN_EXPIRED, ERROR_CODES, Retry


def demo_js() -> str:
    with open(os.path.join(STATIC_DIR, "demo.js"), encoding="utf-8") as fh:
        return fh.read()


def test_the_sdk_gives_up_exactly_where_the_protocol_says_so():
    give_up = {code for code, close in CLOSE_CODES.items() if close.retry is Retry.GIVE_UP}
    assert set(sdk.FATAL_CLOSE_CODES) == give_up
    assert sdk.CLOSE_TOKEN_EXPIRED == CLOSE_TOKEN_EXPIRED
    assert CLOSE_CODES[CLOSE_TOKEN_EXPIRED].retry is Retry.REFRESH


def test_the_demo_page_knows_every_close_and_error_code():
    block = re.search(r"const CLOSES = \{(.*?)\};", demo_js(), re.S)
    assert block is not None
    page = {int(code): retry == "true" for code, retry in re.findall(r"(\d{4}): \[\".*?\", (true|false)\]", block[1])}
    for code, close in CLOSE_CODES.items():
        assert code in page, f"demo.js has no text for close {code}"
        assert page[code] == (close.retry is not Retry.GIVE_UP), f"demo.js retries {code} differently"
    errors = re.search(r"const ERROR_TEXT = \{(.*?)\};", demo_js(), re.S)
    assert errors is not None
    assert set(re.findall(r"(\w+): \"", errors[1])) == set(ERROR_CODES)
