"""A real middlebox for the HTTP transport's tests: Debian's nginx in front of a gateway, passing no
WebSocket upgrades, with its default proxy_buffering (scripts/nginx.sh)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from tests.conftest import unavailable
from tests.helpers import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "nginx.sh")


@contextlib.contextmanager
def proxy_without_upgrades(upstream: int) -> Iterator[int]:
    """nginx on 127.0.0.1 proxying to the gateway on `upstream`, for as long as the block runs; yields its port."""
    if not os.access(os.environ.get("RTG_NGINX", "/usr/sbin/nginx"), os.X_OK):
        unavailable("nginx is not installed (scripts/nginx.sh ensure installs it)")
    folder = tempfile.mkdtemp(prefix="rtg-nginx-")
    try:
        started = subprocess.run(
            [SCRIPT, "start", folder, str(upstream)], capture_output=True, text=True, timeout=30, check=False
        )
        assert started.returncode == 0, started.stderr
        yield int(started.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([SCRIPT, "stop", folder], timeout=30, check=False)
        shutil.rmtree(folder, ignore_errors=True)
