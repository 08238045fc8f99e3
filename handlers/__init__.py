"""Tornado handlers: they parse and reply; the services decide."""
