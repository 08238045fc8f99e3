# syntax=docker/dockerfile:1
#
# Realtime Gateway image: the one the Helm chart (charts/realtime-gateway) runs.
#
#   docker build -t realtime-gateway:0.1.0 .
#   docker run --rm -p 3000:3000 -e JWT_SECRET="$(openssl rand -hex 32)" realtime-gateway:0.1.0
#
# Two stages: the builder turns requirements.txt into wheels (with a compiler at hand for any sdist);
# the runtime image gets only an installed virtualenv and the app, no compiler, no pip cache, and runs
# as uid 10001 on a read-only root filesystem (nothing is written at runtime; mount an emptyDir at /tmp).

ARG PYTHON_IMAGE=python:3.11-slim

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
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-index --find-links=/wheels -r requirements.txt

# ---------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG APP_VERSION=0.1.0
LABEL org.opencontainers.image.title="realtime-gateway" \
      org.opencontainers.image.description="Horizontally scalable WebSocket gateway for chat (Tornado)" \
      org.opencontainers.image.version="${APP_VERSION}"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PORT=3000 \
    HOST=0.0.0.0
# HOST is explicit: a container is always reached over its network. Without JWT_SECRET the server
# still generates a secret for the run, and /dev/token still answers loopback clients only.

# Unprivileged user with a fixed uid/gid (the chart's runAsUser), no home, no login shell.
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app

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

# python:3.11-slim has no curl: probe /healthz with the standard library (urlopen raises on non-2xx).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '3000'), timeout=3)"]

# SIGTERM starts the drain (readiness 503, sockets closed with 1012 over DRAIN_WINDOW, exit 0).
STOPSIGNAL SIGTERM
ENTRYPOINT ["python", "server.py"]
