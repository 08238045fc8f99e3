"""Errors shared by the backends, kept apart from any one implementation so the hub need not
import Redis to recognise them."""

from __future__ import annotations


class StoreError(Exception):
    """A shared store (presence, dedupe) could not be reached. The hub never sees it: the gateway
    wraps the Redis stores in services/fallback.py, which answer from this instance instead (the
    store logs once per change of state)."""
