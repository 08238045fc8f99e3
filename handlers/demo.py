"""/demo: the static chat page in handlers/static/ (plain HTML/CSS/JS, no build step).

The files live inside the package (installed as package data), so an installed gateway serves /demo too.

Served with a strict Content-Security-Policy: the page only loads its own files and only talks to
this gateway, so even a rendering bug could not run injected script.
"""

from __future__ import annotations

import os
from typing import Any

from tornado.web import StaticFileHandler

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class DemoFileHandler(StaticFileHandler):
    def set_extra_headers(self, path: str) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        # Revalidate every time (ETag): a gateway upgrade must not leave an old page in caches.
        self.set_header("Cache-Control", "no-cache")


class DemoPageHandler(DemoFileHandler):
    """/demo itself answers 200 with the page, no redirect to /demo/ (its asset URLs are absolute)."""

    async def get(self, path: str = "", include_body: bool = True) -> None:
        await super().get("index.html", include_body)


def demo_routes() -> list[Any]:
    return [
        (r"/demo", DemoPageHandler, {"path": STATIC_DIR}),
        (r"/demo/(.*)", DemoFileHandler, {"path": STATIC_DIR, "default_filename": "index.html"}),
    ]
