"""/dev/token?sub=NAME: a token for trying the gateway. Routed only with the generated dev
secret or --dev; in every other mode the path does not exist (404). Answered to loopback clients
only (403 otherwise): whoever can mint tokens can be anyone."""

from __future__ import annotations

import re

from handlers.common import JsonHandler
from services.admission import parse_address
from services.auth import mint
from services.gateway import Gateway

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
TTL = 24 * 3600


class DevTokenHandler(JsonHandler):
    def initialize(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def get(self) -> None:
        if not _loopback(self.request.remote_ip):
            self.write_json(403, {"error": "/dev/token answers loopback clients only"})
            return
        sub = self.get_query_argument("sub", "").strip()
        if not _NAME.match(sub):
            self.write_json(400, {"error": "sub must be 1-64 letters, digits or _ . @ -"})
            return
        rooms = self.get_query_argument("rooms", None)
        room_list = [r.strip() for r in rooms.split(",") if r.strip()] if rooms else None
        secret = self.gateway.settings.jwt_secret
        assert secret is not None
        self.write_json(200, {"token": mint(secret, sub, ttl=TTL, rooms=room_list), "sub": sub, "expiresIn": TTL})


def _loopback(address: str | None) -> bool:
    ip = parse_address(address)
    return ip is not None and ip.is_loopback
