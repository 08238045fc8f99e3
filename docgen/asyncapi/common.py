"""Names and small helpers the parts of docs/asyncapi.yaml share."""

from __future__ import annotations

from services.settings import OPTIONS
from services.settings.options import Option

VERSION = "1.0.0"
WS = "gateway"  # the WebSocket server's and channel's key
KAFKA = "kafka"  # the Kafka server's key
KAFKA_HOST = "127.0.0.1:9092"
WS_BINDING = "0.1.0"
KAFKA_BINDING = "0.5.0"
PROTOCOL_DOC = "docs/protocol.md"
KAFKA_DOC = "docs/kafka.md"


def option(name: str) -> Option:
    return next(o for o in OPTIONS if o.name == name)


def ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)}


def camel(*words: str) -> str:
    parts = [w for word in words for w in word.replace(".", "_").split("_") if w]
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def pascal(*words: str) -> str:
    name = camel(*words)
    return name[:1].upper() + name[1:]


def token_security() -> list[dict[str, str]]:
    """The token in the query or as a Bearer header, on every server that takes one."""
    return [ref("components", "securitySchemes", "queryToken"), ref("components", "securitySchemes", "bearerToken")]
