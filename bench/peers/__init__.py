"""Peer servers the gateway is compared with (run from the bench venv)."""
