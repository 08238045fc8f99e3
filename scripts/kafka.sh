#!/usr/bin/env bash
# A real Apache Kafka broker (KRaft, one node acting as broker and controller) for tests,
# listening on 127.0.0.1 only. Jars come from Maven Central (scripts/kafka/pom.xml) and are
# cached in .cache/kafka/libs; nothing has to be installed by hand.
#
#   scripts/kafka.sh start    start (or report) the broker, then create the project's topics
#   scripts/kafka.sh stop     stop it; data and port are kept, so `start` brings it back as it was
#   scripts/kafka.sh status   print running/stopped and the address (exit 0 running, 3 stopped)
#   scripts/kafka.sh topics   create the project's topics if missing (broker must be running)
#   scripts/kafka.sh cached   exit 0 when the jars are cached (nothing to fetch with mvn)
#
# Environment:
#   KAFKA_DIR   runtime dir (default .cache/kafka/run): server.properties, data/, logs/, kafka.pid,
#               port files and `brokers` (holds 127.0.0.1:PORT for clients)
#   KAFKA_PORT  client port; otherwise the port remembered in KAFKA_DIR, or a free one on first start
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONF="$ROOT/scripts/kafka"
CACHE="$ROOT/.cache/kafka"
LIBS="$CACHE/libs"
DIR="$(mkdir -p "${KAFKA_DIR:-$CACHE/run}" && cd "${KAFKA_DIR:-$CACHE/run}" && pwd)"
PIDFILE="$DIR/kafka.pid"
LOG="$DIR/logs/kafka.log"
TOPICS=(chat.messages.ingest chat.messages.events chat.rooms.events chat.users.events chat.presence.events)
PARTITIONS=3
START_TIMEOUT=60
STOP_TIMEOUT=20

die() { echo "kafka.sh: $*" >&2; exit 1; }

# Resolve the broker jars once. The marker holds the pom's checksum, so an interrupted download
# or a version bump in the pom triggers a fresh resolve instead of running a half-filled folder.
libs_cached() {
  [[ "$(cat "$LIBS/.complete" 2>/dev/null)" == "$(sha256sum "$CONF/pom.xml" | cut -d' ' -f1)" ]]
}

ensure_libs() {
  libs_cached && return
  command -v java >/dev/null || die "java not found (need a JDK 17+)"
  command -v mvn >/dev/null || die "mvn not found"
  echo "kafka.sh: resolving Kafka jars from Maven Central into $LIBS"
  rm -rf "$LIBS" "$LIBS.tmp"
  # Maven's own repository also lives under .cache, so `make clean` really starts from nothing.
  # Output goes to a log shown only on failure (Debian's mvn prints stray escape codes even with -q).
  mkdir -p "$CACHE"
  mvn -q -B -f "$CONF/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" \
    >"$CACHE/mvn.log" 2>&1 || { cat "$CACHE/mvn.log" >&2; die "resolving the Kafka jars failed"; }
  mv "$LIBS.tmp" "$LIBS"
  sha256sum "$CONF/pom.xml" | cut -d' ' -f1 >"$LIBS/.complete"
}

pid_alive() {
  local pid
  pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1
  # Check the command line too: after a reboot the old pid may belong to another process.
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && grep -qa 'kafka\.Kafka' "/proc/$pid/cmdline" 2>/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

address() { cat "$DIR/brokers" 2>/dev/null || echo "127.0.0.1:?"; }

# Keep the client and controller ports in the dir: tests stop and restart the broker to simulate an
# outage and expect it back on the same address (the controller port must match the formatted quorum).
choose_ports() {
  if [[ -n "${KAFKA_PORT:-}" ]]; then echo "$KAFKA_PORT" >"$DIR/port"; fi
  if [[ ! -s "$DIR/port" || ! -s "$DIR/controller.port" ]]; then
    # Bind both sockets at once so the kernel hands out two different free ports.
    local ports
    ports="$(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')"
    [[ -s "$DIR/port" ]] || echo "${ports% *}" >"$DIR/port"
    [[ -s "$DIR/controller.port" ]] || echo "${ports#* }" >"$DIR/controller.port"
  fi
  PORT="$(cat "$DIR/port")"
  CPORT="$(cat "$DIR/controller.port")"
  echo "127.0.0.1:$PORT" >"$DIR/brokers"
}

render_config() {
  sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CPORT|g" -e "s|@DATA_DIR@|$DIR/data|g" \
    "$CONF/server.properties.template" >"$DIR/server.properties"
}

# Small heap: the machine has 2 cores and the tests run beside the broker.
JAVA_OPTS=(-Xms256m -Xmx512m -Djava.net.preferIPv4Stack=true
  -Dlog4j2.configurationFile="$CONF/log4j2.properties" -Dkafka.logs.dir="$DIR/logs" -cp "$LIBS/*")

format_storage() {
  if [[ -f "$DIR/data/meta.properties" ]]; then return; fi
  # A cluster id is 16 random bytes in URL-safe base64 (what `StorageTool random-uuid` prints);
  # python saves a JVM start. Kafka rejects ids starting with '-', hence the loop.
  local id
  id="$(python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break')"
  java "${JAVA_OPTS[@]}" kafka.tools.StorageTool format -g -t "$id" -c "$DIR/server.properties" >"$DIR/logs/format.log" 2>&1 \
    || { cat "$DIR/logs/format.log" >&2; die "storage format failed"; }
}

fail_start() {
  echo "kafka.sh: $1; last lines of $LOG:" >&2
  tail -n 40 "$LOG" >&2 || true
  # Do not leave a half-started broker behind: the next `start` would take it for a running one.
  stop >/dev/null
  exit 1
}

start() {
  if pid_alive; then
    echo "kafka: already running on $(address) (pid $(cat "$PIDFILE"))"
    topics
    return
  fi
  ensure_libs
  mkdir -p "$DIR/data" "$DIR/logs"
  choose_ports
  render_config
  format_storage
  # Readiness is read from this log, so the previous run's lines must not count.
  [[ -f "$LOG" ]] && mv "$LOG" "$LOG.1"
  # stdin/stdout/stderr detached: a caller capturing our output must not wait for the broker.
  nohup java "${JAVA_OPTS[@]}" kafka.Kafka "$DIR/server.properties" </dev/null >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"

  local deadline=$((SECONDS + START_TIMEOUT))
  until grep -qs 'Kafka Server started' "$LOG" && port_open "$PORT"; do
    # kill -0, not pid_alive: right after the fork the child may not have exec'd java yet, and its
    # command line would not name kafka.Kafka.
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || fail_start "broker exited during startup"
    ((SECONDS < deadline)) || fail_start "broker not ready after ${START_TIMEOUT}s"
    sleep 0.3
  done
  echo "kafka: started on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), dir $DIR)"
  topics
}

stop() {
  if ! pid_alive; then
    rm -f "$PIDFILE"
    echo "kafka: not running"
    return
  fi
  local pid
  pid="$(cat "$PIDFILE")"
  # SIGTERM runs the broker's controlled shutdown (clean log close, no recovery on next start).
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "kafka.sh: broker did not stop within ${STOP_TIMEOUT}s, killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  rm -f "$PIDFILE"
  echo "kafka: stopped"
}

status() {
  if pid_alive; then
    echo "kafka: running on $(address) (pid $(cat "$PIDFILE"))"
  else
    echo "kafka: stopped (address $(address))"
    return 3
  fi
}

# Create the project's topics if missing, then wait until every partition has a leader so a
# producer started right after this does not race the controller.
topics() {
  pid_alive || die "broker is not running (scripts/kafka.sh start)"
  local py="$ROOT/.venv/bin/python"
  if ! "$py" -c 'import confluent_kafka' 2>/dev/null; then
    make -s -C "$ROOT" dev-venv
  fi
  "$py" - "$(address)" "$PARTITIONS" "${TOPICS[@]}" <<'PY'
import sys, time
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

brokers, partitions, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
admin = AdminClient({"bootstrap.servers": brokers})
existing = admin.list_topics(timeout=15).topics
missing = [n for n in names if n not in existing]
if missing:
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in missing], operation_timeout=15)
    for name, fut in futures.items():
        try:
            fut.result()
            print(f"kafka: created topic {name}")
        except KafkaException as e:
            if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
deadline = time.monotonic() + 15
while True:
    md = admin.list_topics(timeout=5).topics
    ready = all(
        n in md and md[n].error is None and len(md[n].partitions) == partitions
        and all(p.leader >= 0 for p in md[n].partitions.values())
        for n in names
    )
    if ready:
        break
    if time.monotonic() > deadline:
        sys.exit(f"kafka.sh: topics not ready: {names}")
    time.sleep(0.2)
PY
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  topics) topics ;;
  cached) libs_cached ;;
  *) echo "usage: $0 start|stop|status|topics|cached" >&2; exit 2 ;;
esac
