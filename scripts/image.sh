#!/usr/bin/env bash
# The container image, built and run without a Docker daemon or a registry (tests/test_image.py):
# buildah builds the Dockerfile, podman runs it, both from Debian's packages, with their storage in
# .cache/image. The Dockerfile's pinned python:3.11-slim base comes from Docker Hub, which this
# machine cannot reach, so the build uses a stand-in made here from Debian's packages (bookworm's
# Python 3.11, installed as a venv in /usr/local like the official image) through the Dockerfile's
# PYTHON_IMAGE build argument; everything after FROM is the Dockerfile as shipped.
#
#   scripts/image.sh ensure    install buildah, podman, runc and mmdebstrap (apt) if missing
#   scripts/image.sh build     ensure, make the base once, build localhost/realtime-gateway:test
#   scripts/image.sh podman    print the podman command prefix (storage and runtime flags) for callers
#   scripts/image.sh clean     remove the images and containers and the storage
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
source scripts/apt.sh
DIR="$ROOT/.cache/image"
STORE=(--root "$DIR/storage" --runroot "$DIR/run" --storage-driver overlay)
BASE=localhost/realtime-gateway-base:bookworm
IMAGE=localhost/realtime-gateway:test

log() { printf 'image.sh: %s\n' "$*" >&2; }

ensure() {
  local want=()
  for tool in buildah podman runc mmdebstrap; do command -v "$tool" >/dev/null || want+=("$tool"); done
  ((${#want[@]})) || return 0
  log "installing ${want[*]} (apt)"
  apt_install buildah podman runc mmdebstrap uidmap fuse-overlayfs slirp4netns
}

base() {
  if buildah "${STORE[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then return; fi
  mkdir -p "$DIR"
  log "making the base image from Debian's packages (once)"
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    --customize-hook='chroot "$1" python3 -m venv /usr/local' \
    bookworm "$DIR/rootfs.tar"
  podman "${STORE[@]}" import --quiet "$DIR/rootfs.tar" "$BASE" >/dev/null
  rm -f "$DIR/rootfs.tar"
}

build() {
  ensure
  base
  local mounts=()
  # A machine whose outbound HTTPS goes through an intercepting proxy trusts its CA in the host's
  # bundle only: lend the bundle to the build's RUN steps (pip), without baking it into the image.
  [[ -f /etc/ssl/certs/ca-certificates.crt ]] && mounts=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  log "building $IMAGE"
  # The build's chatter (apt, pip) goes to a log shown only when it fails.
  buildah "${STORE[@]}" bud --quiet --isolation chroot --network host --format docker "${mounts[@]}" \
    --build-arg PYTHON_IMAGE="$BASE" -t "$IMAGE" "$ROOT" >"$DIR/build.log" 2>&1 \
    || { cat "$DIR/build.log" >&2; log "the build failed"; exit 1; }
  # The previous build's image, now untagged: keep the storage from growing run after run.
  buildah "${STORE[@]}" rmi --prune >/dev/null 2>&1 || true
  echo "$IMAGE"
}

case "${1:-}" in
  ensure) ensure ;;
  build) build ;;
  # crun, podman's default runtime, cannot start containers on a cgroup v1 host with a v2 mount;
  # runc can.
  podman) echo podman "${STORE[@]}" --runtime runc ;;
  clean)
    podman "${STORE[@]}" rm --all --force >/dev/null 2>&1 || true
    buildah "${STORE[@]}" rmi --all --force >/dev/null 2>&1 || true
    rm -rf "$DIR"
    ;;
  *) echo "usage: $0 ensure|build|podman|clean" >&2; exit 2 ;;
esac
