"""/demo: the static chat page in static/ (plain HTML/CSS/JS, no build step)."""

from __future__ import annotations

import os
from typing import Any

from tornado.web import RedirectHandler, StaticFileHandler

STATIC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "static")


def demo_routes() -> list[Any]:
    return [
        (r"/demo", RedirectHandler, {"url": "/demo/"}),
        (r"/demo/(.*)", StaticFileHandler, {"path": STATIC_DIR, "default_filename": "index.html"}),
    ]
