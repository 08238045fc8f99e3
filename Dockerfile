# syntax=docker/dockerfile:1
#
# Realtime Gateway image: the one the Helm chart (charts/realtime-gateway) runs.
#
#   docker build -t realtime-gateway:0.1.0 .
#   docker run --rm -p 3000:3000 -e JWT_SECRET="$(openssl rand -hex 32)" realtime-gateway:0.1.0
#   docker run --rm -p 3000:3000 -e DEV=true realtime-gateway:0.1.0      # to try it: a throwaway secret
#
# Two stages: the builder turns requirements.txt into wheels (with a compiler at hand for any sdist);
# the runtime image gets only an installed virtualenv and the app, no compiler, no pip, and runs
# as uid 10001 on a read-only root filesystem (nothing is written at runtime; mount an emptyDir at /tmp).
# tests/test_image.py builds and runs it with buildah (README.md, "Container image").

# The base, pinned by digest so that a rebuild gets the same bytes. Refresh it deliberately:
#   docker buildx imagetools inspect python:3.11-slim-bookworm   (the index digest on the first lines)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY requirements.txt .
# Wheels first (binary wheels are simply downloaded, sdists compiled here), then a virtualenv built
# from those wheels only (pip byte-compiles them), so the runtime stage copies one directory.
RUN pip wheel --wheel-dir /wheels -r requirements.txt
# The venv's own pip and setuptools go once the wheels are in: nothing installs at runtime.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links=/wheels -r requirements.txt \
 && /opt/venv/bin/python -m pip uninstall -y -q pip setuptools

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_VERSION=0.1.0
LABEL org.opencontainers.image.title="realtime-gateway" \
      org.opencontainers.image.description="Horizontally scalable WebSocket gateway for chat (Tornado)" \
      org.opencontainers.image.version="${APP_VERSION}"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PORT=3000 \
    HOST=0.0.0.0 \
    REQUIRE_SECRET=true
# HOST is explicit: a container is always reached over its network. REQUIRE_SECRET: without
# JWT_SECRET (or JWT_PUBLIC_KEY) the container exits 2 instead of generating a secret and serving
# /dev/token, unless DEV=true asks for exactly that.

# Unprivileged user with a fixed uid/gid (the chart's runAsUser), no home, no login shell. The base's
# own pip, setuptools and wheel go too: the runtime image installs nothing.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
 && (python -m pip uninstall -y -q pip setuptools wheel 2>/dev/null || true)

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# Owned by root and read-only for the app user: the process cannot modify its own code.
COPY requirements.txt server.py ./
COPY handlers ./handlers
COPY services ./services
COPY schemas ./schemas
# Bytecode compiled at build time, since nothing may be written at runtime.
RUN python -m compileall -q /app \
 && chmod -R a+rX /app

USER 10001:10001

EXPOSE 3000

# No curl in the base, and a Python interpreter every 15 s costs ~20 MB and a CPU spike: bash's
# /dev/tcp sends the request and reads the status line (Kubernetes ignores this; the chart has probes).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-3000} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && read -r -t 3 _ status _ <&3 && [ \"$status\" = 200 ]"]

# SIGTERM starts the drain (readiness 503, sockets closed with 1012 over DRAIN_WINDOW, exit 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "server.py"]
