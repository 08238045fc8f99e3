#!/usr/bin/env bash
# A throwaway redis-server for tests, on 127.0.0.1 and a free port, without persistence.
# Installs the Debian package if redis-server is missing, so a fresh machine needs no manual step.
#
#   scripts/redis.sh start    start (or report) the server; its port is written to $REDIS_DIR/port
#   scripts/redis.sh stop     shut it down and wait until it has exited
#   scripts/redis.sh status   print running/stopped and the address (exit 0 running, 3 stopped)
#   scripts/redis.sh install  only make sure redis-server and redis-cli are installed
#
# Environment:
#   REDIS_DIR   runtime dir (default .cache/redis): port, redis.pid, redis.log.
#               Point it elsewhere to run a second, private instance.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/apt.sh"
DIR="$(mkdir -p "${REDIS_DIR:-$ROOT/.cache/redis}" && cd "${REDIS_DIR:-$ROOT/.cache/redis}" && pwd)"
PIDFILE="$DIR/redis.pid"
LOG="$DIR/redis.log"
START_TIMEOUT=10
STOP_TIMEOUT=10

die() { echo "redis.sh: $*" >&2; exit 1; }

ensure_installed() {
  if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then return; fi
  echo "redis.sh: installing redis-server (apt)"
  apt_install redis-server
}

pid_alive() {
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1
  # Check the command line too: a stale pidfile may name an unrelated process.
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -qa 'redis-server' "/proc/$pid/cmdline" 2>/dev/null
}

port() { cat "$DIR/port" 2>/dev/null || echo "?"; }

ping() { [[ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" == "PONG" ]]; }

free_port() {
  python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

fail_start() {
  echo "redis.sh: $1; last lines of $LOG:" >&2
  tail -n 20 "$LOG" >&2 || true
  exit 1
}

start() {
  if pid_alive; then
    echo "redis: already running on 127.0.0.1:$(port) (pid $(cat "$PIDFILE"))"
    return
  fi
  ensure_installed
  local p
  p="$(free_port)"
  echo "$p" >"$DIR/port"
  rm -f "$PIDFILE"
  # Memory only (--save '' --appendonly no); daemonized, so the caller is not tied to it.
  redis-server --bind 127.0.0.1 --port "$p" --protected-mode yes \
    --save '' --appendonly no \
    --daemonize yes --dir "$DIR" --pidfile "$PIDFILE" --logfile "$LOG" \
    </dev/null >/dev/null 2>&1 || fail_start "redis-server failed to launch"

  local deadline=$((SECONDS + START_TIMEOUT))
  until ping "$p"; do
    ((SECONDS < deadline)) || fail_start "no PONG on 127.0.0.1:$p after ${START_TIMEOUT}s"
    sleep 0.1
  done
  echo "redis: started on 127.0.0.1:$p (pid $(cat "$PIDFILE"), dir $DIR)"
}

stop() {
  if ! pid_alive; then
    rm -f "$PIDFILE"
    echo "redis: not running"
    return
  fi
  local pid
  pid="$(cat "$PIDFILE")"
  # nosave: nothing to persist; fall back to a signal if the server does not answer.
  redis-cli -h 127.0.0.1 -p "$(port)" shutdown nosave >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "redis.sh: server did not stop within ${STOP_TIMEOUT}s, killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PIDFILE"
  echo "redis: stopped"
}

status() {
  if pid_alive; then
    echo "redis: running on 127.0.0.1:$(port) (pid $(cat "$PIDFILE"))"
  else
    echo "redis: stopped (last port $(port))"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  install) ensure_installed ;;
  *) echo "usage: $0 start|stop|status|install" >&2; exit 2 ;;
esac
