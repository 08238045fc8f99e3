"""Liveness and readiness probes."""

from __future__ import annotations

from handlers.common import JsonHandler
from services.gateway import Gateway


class HealthHandler(JsonHandler):
    def get(self) -> None:
        self.write_json(200, {"status": "ok"})


class ReadyHandler(JsonHandler):
    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def get(self) -> None:
        ok, checks = self.gateway.readiness()
        self.write_json(
            200 if ok else 503,
            {
                "status": "ready" if ok else "unavailable",
                "instance": self.gateway.instance_id,
                "checks": checks,
            },
        )
