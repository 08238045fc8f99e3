"""What both generated documents (docs/openapi.yaml, docs/asyncapi.yaml) need from apispec's
marshmallow converter beyond its defaults:

    marshmallow_converter(plugin)   the plugin's converter, with the project's own field types mapped
    ecma_patterns(document)         Python regular expressions rewritten as ECMA-262 ones
    yaml_dumper()                   how the documents are written

Needs apispec (requirements-dev.txt); the gateway itself never imports this module.
"""

from __future__ import annotations

from typing import Any

from schemas.events import Moment


def marshmallow_converter(plugin: Any) -> Any:
    """A Moment (schemas/events.py) takes an ISO-8601 string, with or without a zone, or Unix
    seconds: a string or a number, and no `format: date-time`, which would refuse a zoneless time."""
    converter = plugin.converter
    assert converter is not None, "register the plugin with an APISpec first"
    converter.map_to_openapi_type(Moment, ["string", "number"], None)
    return converter


def yaml_dumper(*, literal_blocks: bool = False) -> Any:
    """A safe YAML dumper that writes every repeated part out: the converter shares objects (the
    Moment mapping's type list, say), and anchors and aliases would make the documents harder to
    read. With `literal_blocks`, text of several lines is written as a `|` block."""
    import yaml

    def text(dumper: Any, value: str) -> Any:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    dumper: Any = type("Dumper", (yaml.SafeDumper,), {"ignore_aliases": lambda _self, _data: True})
    if literal_blocks:
        dumper.add_representer(str, text)
    return dumper


def ecma_patterns(node: Any) -> None:
    """The schemas end patterns with Python's `\\Z` (no trailing newline); JSON Schema speaks
    ECMA-262, whose `$` already means the very end."""
    if isinstance(node, dict):
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern.endswith("\\Z"):
            node["pattern"] = pattern[:-2] + "$"
        for value in node.values():
            ecma_patterns(value)
    elif isinstance(node, list):
        for value in node:
            ecma_patterns(value)
