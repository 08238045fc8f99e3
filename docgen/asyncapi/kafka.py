"""The Kafka side: one message per event type (its envelope), the topics as channels, produce
and consume operations with their bindings."""

from __future__ import annotations

from typing import Any

from docgen.asyncapi.common import KAFKA, KAFKA_BINDING, KAFKA_DOC, camel, option, pascal, ref
from docgen.asyncapi.convert import Converted
from docgen.asyncapi.tables import EVENTS, TOPICS
from schemas import events


def event_messages(conv: Converted, envelopes: dict[str, Any]) -> dict[str, Any]:
    """The events' messages; each event's envelope goes into `envelopes` under its name."""
    messages: dict[str, Any] = {}
    for setting, _channel, action, types, key in TOPICS:
        topic = option(setting)
        for event_type in types:
            payload, summary = EVENTS[event_type]
            envelope = conv.inline(events.EnvelopeSchema)
            props = envelope["properties"]
            props["eventId"]["description"] = "Unique per event: consumers drop duplicates by it."
            props["type"] = {"type": "string", "const": event_type}
            props["version"] = {"type": "integer", "const": 1}
            props["occurredAt"]["description"] = "ISO-8601 UTC."
            props["source"]["description"] = "Who wrote the record; the gateway writes {KAFKA_CLIENT_ID}/{instance id}."
            props["payload"] = conv.ref(payload)
            record_key = conv.field(payload, key)
            record_key["description"] = f"The payload's {key}, UTF-8."
            who = "Produced by the gateway" if action == "send" else "Consumed by the gateway"
            name = pascal(event_type, "event")
            envelopes[name] = envelope
            messages[f"event.{event_type}"] = {
                "name": name,
                "title": event_type,
                "summary": summary,
                "description": f"{who} on {topic.env}. Consumers ignore unknown fields. See {KAFKA_DOC}.",
                "contentType": "application/json",
                "payload": ref("components", "schemas", name),
                "bindings": {"kafka": {"key": record_key, "bindingVersion": KAFKA_BINDING}},
            }
    return messages


def kafka_channels_and_operations() -> tuple[dict[str, Any], dict[str, Any]]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for setting, channel, action, types, key in TOPICS:
        topic = option(setting)
        produced = action == "send"
        channels[channel] = {
            "address": topic.default,
            "title": topic.env,
            "summary": f"{'Produced' if produced else 'Consumed'} by the gateway: {', '.join(types)}.",
            "description": (
                f"The default name; set by {topic.env} ({topic.help}). Records are keyed by {key}. "
                + ("" if produced else "A consumed type is accepted on either consumed topic. ")
                + f"See {KAFKA_DOC}, 'Topics'."
            ),
            "servers": [ref("servers", KAFKA)],
            "messages": {f"event.{t}": ref("components", "messages", f"event.{t}") for t in types},
        }
        for event_type in types:
            operations[camel(action, event_type)] = {
                "action": action,
                "channel": ref("channels", channel),
                "title": f"{'Produce' if produced else 'Consume'} {event_type}",
                "summary": EVENTS[event_type][1],
                "tags": [{"name": "kafka"}],
                "bindings": ref("components", "operationBindings", "producer" if produced else "consumer"),
                "messages": [ref("channels", channel, "messages", f"event.{event_type}")],
            }
    return channels, operations


def operation_bindings() -> dict[str, Any]:
    group = option("kafka_group_id")
    client_id = option("kafka_client_id")
    client_id_schema = {"type": "string", "default": client_id.default, "description": f"{client_id.env}."}
    return {
        "consumer": {
            "kafka": {
                "groupId": {"type": "string", "default": group.default, "description": f"{group.env}: {group.help}."},
                "clientId": client_id_schema,
                "bindingVersion": KAFKA_BINDING,
            }
        },
        "producer": {"kafka": {"clientId": dict(client_id_schema), "bindingVersion": KAFKA_BINDING}},
    }
