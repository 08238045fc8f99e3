#!/usr/bin/env bash
# A real middlebox for the HTTP transport's tests: Debian's nginx on 127.0.0.1, a reverse proxy to
# a gateway that does NOT pass WebSocket upgrades (no `proxy_set_header Upgrade/Connection`, as
# many corporate proxies), with nginx's default `proxy_buffering on` (the gateway's
# `X-Accel-Buffering: no` is what lets its events through at once).
#
#   scripts/nginx.sh ensure              install nginx (apt) if it is missing
#   scripts/nginx.sh start DIR UPSTREAM  start one in DIR proxying to 127.0.0.1:UPSTREAM; prints its
#                                        port (also in DIR/port) once it accepts connections
#   scripts/nginx.sh stop DIR            stop it and wait until it has exited
set -euo pipefail
source "$(dirname "$0")/apt.sh"

NGINX="${RTG_NGINX:-/usr/sbin/nginx}"
START_TIMEOUT=10
STOP_TIMEOUT=10

die() { echo "nginx.sh: $*" >&2; exit 1; }

ensure() {
  if [[ -x "$NGINX" ]]; then return; fi
  echo "nginx.sh: installing nginx (apt)"
  apt_install nginx
  [[ -x "$NGINX" ]] || die "nginx is not at $NGINX after the install"
}

free_port() {
  python3 -c '
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

accepts() { python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.5).close()" "$1" 2>/dev/null; }

start() {
  local dir="$1" upstream="$2" port
  [[ -n "$dir" && "$upstream" =~ ^[0-9]+$ ]] || die "usage: $0 start DIR UPSTREAM_PORT"
  [[ -x "$NGINX" ]] || die "no nginx at $NGINX: run '$0 ensure' (as root) first"
  mkdir -p "$dir/tmp" && dir="$(cd "$dir" && pwd)"
  port="$(free_port)"
  local user=""
  [[ "$(id -u)" == 0 ]] && user="user root;"  # its workers write the temp folders below
  cat >"$dir/nginx.conf" <<CONF
$user
daemon on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 512; }
http {
  access_log $dir/access.log;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://127.0.0.1:$upstream;
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      # No Upgrade and Connection headers: a WebSocket handshake reaches the gateway as a plain GET.
    }
  }
}
CONF
  "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" || die "nginx did not start; see $dir/error.log"
  local deadline=$((SECONDS + START_TIMEOUT))
  until accepts "$port"; do
    ((SECONDS < deadline)) || die "nginx did not accept on $port within ${START_TIMEOUT}s"
    sleep 0.1
  done
  echo "$port" >"$dir/port"
  echo "$port"
}

stop() {
  local dir="$1" pid
  pid="$(cat "$dir/nginx.pid" 2>/dev/null)" || return 0
  kill "$pid" 2>/dev/null || return 0
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while kill -0 "$pid" 2>/dev/null; do
    ((SECONDS < deadline)) || { kill -9 "$pid" 2>/dev/null; break; }
    sleep 0.1
  done
}

case "${1:-}" in
  ensure) ensure ;;
  start) start "${2:-}" "${3:-}" ;;
  stop) stop "${2:?usage: $0 stop DIR}" ;;
  *) echo "usage: $0 ensure | start DIR UPSTREAM_PORT | stop DIR" >&2; exit 2 ;;
esac
