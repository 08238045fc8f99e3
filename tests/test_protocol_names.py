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
    block = re.search(r"const CLOSE_TEXT = \{(.*?)\};", demo_js(), re.S)
    give_up = re.search(r"const GIVE_UP_CLOSES = new Set\(\[(.*?)\]\);", demo_js())
    assert block is not None and give_up is not None
    texts = {int(code) for code in re.findall(r"(\d{4}): \"", block[1])}
    assert texts >= set(CLOSE_CODES), f"demo.js has no text for close {set(CLOSE_CODES) - texts}"
    page_gives_up = {int(code) for code in re.findall(r"\d{4}", give_up[1])}
    assert page_gives_up == {code for code, close in CLOSE_CODES.items() if close.retry is Retry.GIVE_UP}
    errors = re.search(r"const ERROR_TEXT = \{(.*?)\};", demo_js(), re.S)
    assert errors is not None
    assert set(re.findall(r"(\w+): \"", errors[1])) == set(ERROR_CODES)
