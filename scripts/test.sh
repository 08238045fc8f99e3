#!/usr/bin/env bash
# Run the whole suite against real services: Redis and Kafka started from this project's own
# scripts; helm, Chromium, nginx, buildah/podman and the npm folders installed if missing. Everything
# started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

cleanup() {
  scripts/kafka.sh stop >/dev/null 2>&1 || true
  scripts/redis.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

scripts/redis.sh start
scripts/kafka.sh start
scripts/helm.sh ensure
scripts/chromium.sh ensure
scripts/nginx.sh ensure
scripts/image.sh ensure
scripts/node.sh ensure

export RTG_TEST_REDIS_PORT="$(cat .cache/redis/port)"
export RTG_TEST_KAFKA_BROKERS="$(cat .cache/kafka/run/brokers)"
export RTG_HELM="$PWD/.cache/bin/helm"
export RTG_REQUIRE_SERVICES=1

echo "== lint"
$BIN/ruff check .
$BIN/ruff format --check .
$BIN/mypy .

echo "== JavaScript client (client-js: node --test against real gateways)"
(cd client-js && npm test --silent)

echo "== tests"
mkdir -p artifacts
if [ "$#" -gt 0 ]; then
  $BIN/python -m pytest -m "" "$@"  # what was asked for, whatever its tier
else
  # The fast tier in parallel (in-process gateways on their own ports, nothing shared), then the
  # tests that share Redis, Kafka, helm, Chromium or the image tools, one at a time (docs/testing.md).
  # Both tiers run even when the first fails, so one run reports every failure.
  fast=0
  $BIN/python -m pytest -m "not slow" -n 2 || fast=$?
  $BIN/python -m pytest -m slow
  exit "$fast"
fi
