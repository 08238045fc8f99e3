#!/usr/bin/env bash
# A throwaway redis-server for the test suite: `scripts/redis.sh start|stop|port`.
# Listens on 127.0.0.1 on a free port (written to .cache/redis/port), keeps nothing on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.cache/redis
mkdir -p "$DIR"

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

case "${1:-}" in
  start)
    command -v redis-server >/dev/null || { echo "redis-server not found (apt-get install redis-server)" >&2; exit 1; }
    if [ -f "$DIR/pid" ] && kill -0 "$(cat "$DIR/pid")" 2>/dev/null; then
      echo "redis already running on port $(cat "$DIR/port")"
      exit 0
    fi
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
      --dir "$PWD/$DIR" --pidfile "$PWD/$DIR/pid" --logfile "$PWD/$DIR/redis.log"
    for _ in $(seq 1 100); do
      if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
        echo "$port" >"$DIR/port"
        echo "redis started on port $port"
        exit 0
      fi
      sleep 0.05
    done
    echo "redis did not start; see $DIR/redis.log" >&2
    exit 1
    ;;
  stop)
    if [ -f "$DIR/pid" ]; then
      kill "$(cat "$DIR/pid")" 2>/dev/null || true
      rm -f "$DIR/pid" "$DIR/port"
    fi
    ;;
  port)
    cat "$DIR/port"
    ;;
  *)
    echo "usage: $0 start|stop|port" >&2
    exit 2
    ;;
esac
