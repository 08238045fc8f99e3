"""The README stays true: every setting, error code and close code the code knows is documented."""

from __future__ import annotations

import os

from schemas.protocol import CLOSE_CODES, ERROR_CODES
from services.settings import OPTIONS
from services.settings.options import markdown_table
from tests.helpers import ROOT


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        return fh.read()


def test_every_setting_is_in_the_readme():
    text = readme()
    missing = [o.env for o in OPTIONS if f"`{o.env}`" not in text or f"`{o.flag}" not in text]
    assert not missing


def test_the_readme_configuration_table_is_generated_from_the_settings():
    """`python -m services.settings` prints it; paste it into the README when a setting changes."""
    assert markdown_table(OPTIONS) in readme()


def protocol_doc() -> str:
    with open(os.path.join(ROOT, "docs", "protocol.md"), encoding="utf-8") as fh:
        return fh.read()


def test_every_error_and_close_code_is_documented_with_what_to_do():
    doc, summary = protocol_doc(), readme()
    assert [c for c in ERROR_CODES if f"| `{c}` |" not in doc or f"`{c}`" not in summary] == []
    for code, close in CLOSE_CODES.items():
        row = next((line for line in doc.splitlines() if line.startswith(f"| {code} |")), None)
        assert row is not None and row.endswith(f"| {close.retry.value} |"), (code, row)
        assert str(code) in summary


def test_readme_shows_the_two_commands():
    text = readme()
    assert "make run" in text and "make test" in text
