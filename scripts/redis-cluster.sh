#!/usr/bin/env bash
# A throwaway Redis Cluster for tests and benchmarks: 3 primaries and 3 replicas of Debian's
# redis-server on 127.0.0.1, created with `redis-cli --cluster create`, without persistence.
#
#   scripts/redis-cluster.sh start    start (or report) the cluster; its seeds go to $CLUSTER_DIR/nodes
#   scripts/redis-cluster.sh stop     shut every node down and wait until they have exited
#   scripts/redis-cluster.sh status   running/stopped and the seeds (exit 0 running, 3 stopped)
#
# Environment:
#   CLUSTER_DIR           runtime dir (default .cache/redis-cluster): nodes, one folder per node
#   CLUSTER_NODE_TIMEOUT  ms before a silent primary is failed over (default 5000)
#   CLUSTER_TLS_CERT, CLUSTER_TLS_KEY, CLUSTER_TLS_CA
#                         PEM files: the nodes then speak TLS only (clients, cluster bus, replication)
#   CLUSTER_USER, CLUSTER_PASSWORD
#                         an ACL user for everything (replicas log in with it); the default user is off
# `start` returns once every node reports cluster_state:ok and every replica has synced, so a
# primary killed right after can fail over.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="$(mkdir -p "${CLUSTER_DIR:-$ROOT/.cache/redis-cluster}" && cd "${CLUSTER_DIR:-$ROOT/.cache/redis-cluster}" && pwd)"
NODE_TIMEOUT="${CLUSTER_NODE_TIMEOUT:-5000}"
START_TIMEOUT=30
STOP_TIMEOUT=10

die() { echo "redis-cluster.sh: $*" >&2; exit 1; }

CLI_ARGS=()
NODE_ARGS=()
if [[ -n "${CLUSTER_TLS_CERT:-}" ]]; then
  CLI_ARGS+=(--tls --cacert "$CLUSTER_TLS_CA")
  NODE_ARGS+=(--tls-cert-file "$CLUSTER_TLS_CERT" --tls-key-file "$CLUSTER_TLS_KEY"
    --tls-ca-cert-file "$CLUSTER_TLS_CA" --tls-auth-clients no --tls-cluster yes --tls-replication yes)
fi
if [[ -n "${CLUSTER_USER:-}" ]]; then
  CLI_ARGS+=(--user "$CLUSTER_USER" --pass "$CLUSTER_PASSWORD" --no-auth-warning)
  NODE_ARGS+=(--user default off --user "$CLUSTER_USER" on ">$CLUSTER_PASSWORD" '~*' '&*' '+@all'
    --masteruser "$CLUSTER_USER" --masterauth "$CLUSTER_PASSWORD")
fi

ports() { [[ -f "$DIR/nodes" ]] && tr ',' '\n' <"$DIR/nodes" | sed 's/.*://'; }

alive() {
  local pid
  pid="$(cat "$DIR/$1/redis.pid" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -qa 'redis-server' "/proc/$pid/cmdline" 2>/dev/null
}

running() {
  local p any=1
  for p in $(ports); do alive "$p" && any=0; done
  return $any
}

cli() { redis-cli -h 127.0.0.1 -p "$1" "${CLI_ARGS[@]}" "${@:2}" 2>/dev/null; }

# Six ports P whose cluster bus ports (P + 10000) are free too, both outside the kernel's range of
# ephemeral ports: a connect() to a port nobody listens on (a killed node's) can otherwise be given
# that very port as its source and connect to itself (TCP simultaneous open). A node whose cluster
# bus link to a dead primary does so reads its own PING back, marks the primary "noaddr" and no
# longer counts it as failing: with 3 primaries the quorum is never reached and the replica never
# takes over.
pick_ports() {
  python3 - <<'EOF'
import random, socket
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = map(int, f.read().split())
except (OSError, ValueError):
    lo, hi = 32768, 60999  # Linux's default
def outside(p):
    return not lo <= p <= hi
candidates = [p for p in range(10000, 55536) if outside(p) and outside(p + 10000)] or list(range(20000, 40000))
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
picked = []
while len(picked) < 6:
    p = random.choice(candidates)
    if p not in picked and free(p) and free(p + 10000):
        picked.append(p)
print(" ".join(map(str, picked)))
EOF
}

fail_start() {
  echo "redis-cluster.sh: $1" >&2
  local p
  for p in $(ports); do tail -n 5 "$DIR/$p/redis.log" >&2 2>/dev/null || true; done
  stop >/dev/null
  exit 1
}

start() {
  if running; then
    echo "redis-cluster: already running ($(cat "$DIR/nodes"))"
    return
  fi
  "$ROOT/scripts/redis.sh" install
  local picked p seeds=""
  picked="$(pick_ports)"
  rm -rf "${DIR:?}"/[0-9]*
  for p in $picked; do
    mkdir -p "$DIR/$p"
    local listen=(--port "$p")
    [[ -n "${CLUSTER_TLS_CERT:-}" ]] && listen=(--port 0 --tls-port "$p")
    redis-server --bind 127.0.0.1 "${listen[@]}" --protected-mode yes "${NODE_ARGS[@]}" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout "$NODE_TIMEOUT" \
      --save '' --appendonly no --repl-diskless-sync-delay 0 \
      --daemonize yes --dir "$DIR/$p" --pidfile "$DIR/$p/redis.pid" --logfile "$DIR/$p/redis.log" \
      </dev/null >/dev/null 2>&1 || fail_start "redis-server on $p failed to launch"
    seeds="${seeds:+$seeds,}127.0.0.1:$p"
  done
  echo "$seeds" >"$DIR/nodes"
  local deadline=$((SECONDS + START_TIMEOUT))
  for p in $picked; do
    until [[ "$(cli "$p" ping)" == "PONG" ]]; do
      ((SECONDS < deadline)) || fail_start "no PONG on 127.0.0.1:$p"
      sleep 0.05
    done
  done
  # shellcheck disable=SC2046
  timeout "$START_TIMEOUT" redis-cli "${CLI_ARGS[@]}" --cluster create $(tr ',' ' ' <"$DIR/nodes") --cluster-replicas 1 --cluster-yes \
    >"$DIR/create.log" 2>&1 || fail_start "redis-cli --cluster create failed (see $DIR/create.log)"
  for p in $picked; do
    until cli "$p" cluster info | grep -q '^cluster_state:ok'; do
      ((SECONDS < deadline)) || fail_start "node $p never reported cluster_state:ok"
      sleep 0.1
    done
    if cli "$p" info replication | grep -q '^role:slave'; then
      until cli "$p" info replication | grep -q '^master_link_status:up'; do
        ((SECONDS < deadline)) || fail_start "replica $p never synced with its primary"
        sleep 0.1
      done
    fi
  done
  echo "redis-cluster: started, 3 primaries + 3 replicas ($seeds, dir $DIR)"
}

stop() {
  local p pid
  for p in $(ports); do
    alive "$p" || continue
    cli "$p" shutdown nosave >/dev/null || kill -TERM "$(cat "$DIR/$p/redis.pid")" 2>/dev/null || true
  done
  local deadline=$((SECONDS + STOP_TIMEOUT))
  for p in $(ports); do
    pid="$(cat "$DIR/$p/redis.pid" 2>/dev/null)" || continue
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$DIR/$p/redis.pid"
  done
  echo "redis-cluster: stopped"
}

status() {
  if running; then
    echo "redis-cluster: running ($(cat "$DIR/nodes"))"
  else
    echo "redis-cluster: stopped"
    return 3
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
