"""Errors shared by the backends, kept apart from any one implementation so the hub need not
import Redis to recognise them."""

from __future__ import annotations


class StoreError(Exception):
    """A shared store (presence, dedupe) could not be reached: the client gets `error internal`,
    the caller logs nothing more (the store logs once per change of state)."""
