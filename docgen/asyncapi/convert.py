"""The marshmallow schemas as JSON Schema, through apispec's converter, and what it cannot say."""

from __future__ import annotations

import copy
from typing import Any

from marshmallow import Schema, validate

from docgen.asyncapi.common import VERSION, pascal, ref
from docgen.json_schema import marshmallow_converter
from schemas import client
from schemas.client import MessageSchema
from schemas.server import HistoryEntryOut
from services.settings.options import Option


def schema_name(schema: type[Schema] | Schema) -> str:
    from apispec.ext.marshmallow import resolver
    from apispec.ext.marshmallow.common import resolve_schema_cls

    name = resolver(schema)  # type: ignore[arg-type]
    cls = resolve_schema_cls(schema)
    return f"Client{name}" if getattr(cls, "__module__", "") == client.__name__ else name


class Converted:
    """Marshmallow schemas as JSON Schema: components registered on first use, under `schema_name`."""

    def __init__(self) -> None:
        from apispec import APISpec
        from apispec.ext.marshmallow import MarshmallowPlugin

        self.plugin = MarshmallowPlugin(schema_name_resolver=schema_name)
        self.spec = APISpec(title="-", version=VERSION, openapi_version="3.1.0", plugins=[self.plugin])
        self.converter = marshmallow_converter(self.plugin)
        self.names: dict[type[Schema], str] = {}

    def ref(self, schema: type[Schema]) -> dict[str, str]:
        """A reference to `schema` under components/schemas."""
        if schema not in self.names:
            self.names[schema] = schema_name(schema)
            self.spec.components.schema(self.names[schema], schema=schema)
        return ref("components", "schemas", self.names[schema])

    def inline(self, schema: type[Schema]) -> dict[str, Any]:
        """The JSON Schema of `schema` itself, its nested schemas as references."""
        out: dict[str, Any] = self.converter.schema2jsonschema(schema)
        return out

    def field(self, schema: type[Schema], name: str) -> dict[str, Any]:
        out: dict[str, Any] = self.converter.field2property(schema._declared_fields[name])
        return out

    def components(self) -> dict[str, Any]:
        out: dict[str, Any] = copy.deepcopy(self.spec.to_dict()["components"]["schemas"])
        return out


def refine(schemas: dict[str, Any], entries: dict[str, dict[str, str]], max_content: Option) -> None:
    """What the marshmallow converter cannot express. `entries`: a history entry's type -> a
    reference to its payload's schema (registered before the components were taken)."""
    content = schemas[schema_name(MessageSchema)]["properties"]["content"]
    content["minLength"] = 1
    content["maxLength"] = max_content.default
    content["description"] = (
        f"1 to {max_content.env} (default {max_content.default}) characters, counted in code points "
        "(MessageSchema's @validates rule)."
    )
    name = schema_name(HistoryEntryOut)
    schemas[name] = {
        "type": "object",
        "description": "One history entry: the frame `type` names, with its payload as it was delivered.",
        "properties": {"type": {"type": "string", "enum": list(entries)}, "payload": {"type": "object"}},
        "required": ["type", "payload"],
        "discriminator": "type",
        "oneOf": [
            {
                "type": "object",
                "title": pascal(kind, "entry"),
                "properties": {"type": {"type": "string", "const": kind}, "payload": ref},
                "required": ["type", "payload"],
            }
            for kind, ref in entries.items()
        ],
    }


def entry_kinds() -> tuple[str, ...]:
    """The frame types a history entry can be, as HistoryEntryOut's `type` allows them."""
    (kinds,) = [v for v in HistoryEntryOut._declared_fields["type"].validators if isinstance(v, validate.OneOf)]
    return tuple(str(kind) for kind in kinds.choices)


def open_objects(node: Any) -> None:
    """Drop `additionalProperties: false`: documented objects may grow fields (see the module's docstring)."""
    if isinstance(node, dict):
        if node.get("additionalProperties") is False:
            del node["additionalProperties"]
        for value in node.values():
            open_objects(value)
    elif isinstance(node, list):
        for value in node:
            open_objects(value)
