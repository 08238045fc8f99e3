"""docs/openapi.yaml is the control API as served: generated from schemas/api.py and up to date,
valid OpenAPI, with exactly the paths and methods handlers/api.py routes, and examples from it
answered as documented by a real gateway."""

from __future__ import annotations

import os
import re

import pytest
import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from docgen.openapi import render
from handlers.api import UnknownApiHandler, api_routes
from tests.control_support import API_KEY, api
from tests.helpers import ROOT, RunningGateway

DOC = os.path.join(ROOT, "docs", "openapi.yaml")
METHODS = ("get", "post", "put", "patch", "delete")


def committed() -> str:
    with open(DOC, encoding="utf-8") as fh:
        return fh.read()


def test_the_document_is_generated_from_the_schemas() -> None:
    assert committed() == render(), "docs/openapi.yaml is out of date: python -m docgen.openapi > docs/openapi.yaml"


def test_the_document_is_valid_openapi() -> None:
    validate(yaml.safe_load(committed()))


def test_the_paths_are_exactly_the_routes() -> None:
    doc = yaml.safe_load(committed())
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops if method in METHODS}
    served = set()
    for pattern, handler, _ in api_routes(None):  # type: ignore[arg-type]
        if handler is UnknownApiHandler:
            continue
        for method in METHODS:
            if method in handler.__dict__:
                served.add((pattern, method))
    assert documented == served
    assert all(re.fullmatch(r"/api/[a-z]+", path) for path, _ in served)


@pytest.mark.gen_test(timeout=20)
async def test_the_documented_schemas_hold_for_real_answers(make_gateway) -> None:
    gw: RunningGateway = await make_gateway(api_key=API_KEY)
    doc = yaml.safe_load(committed())
    schemas = doc["components"]["schemas"]

    def check(name: str, body: object) -> None:
        # The document's own components travel with the schema, so its $refs resolve.
        Draft202012Validator({**schemas[name], "components": doc["components"]}).validate(body)

    status, body = await api(gw.http, "/api/publish", {"roomId": "r", "message": {"senderId": "bot", "content": "x"}})
    assert status == 200
    check("Published", body)
    status, body = await api(gw.http, "/api/revoke", {"userId": "u"})
    assert status == 200
    check("Revoked", body)
    status, body = await api(gw.http, "/api/disconnect", {"userId": "u"})
    assert status == 200
    check("Disconnected", body)
    status, body = await api(gw.http, "/api/presence?roomId=r")
    assert status == 200
    check("PresencePage", body)
    status, body = await api(gw.http, "/api/disconnect", {"userId": ""})
    assert status == 400
    check("ApiError", body)
