#!/usr/bin/env bash
# The project's two npm folders, installed from their lockfiles with npm's cache in .cache/npm:
# client-js (the JavaScript client; TypeScript) and scripts/asyncapi (the official AsyncAPI parser
# that tests/test_asyncapi.py runs).
#
#   scripts/node.sh ensure    npm ci where node_modules is missing or older than the lockfile,
#                             then build client-js (dist/)
#   scripts/node.sh demo      ensure, then copy the built client into handlers/static/client/, the
#                             copy the /demo page loads (committed: the gateway runs without Node);
#                             tests/test_demo_routes.py fails when it differs from the build
set -euo pipefail
cd "$(dirname "$0")/.."
export npm_config_cache="$PWD/.cache/npm" npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

install() {
  local dir=$1
  if [[ ! -d $dir/node_modules || $dir/package-lock.json -nt $dir/node_modules ]]; then
    echo "node.sh: npm ci in $dir"
    (cd "$dir" && npm ci --silent --ignore-scripts)
    touch "$dir/node_modules"
  fi
}

ensure() {
  command -v node >/dev/null || { echo "node.sh: Node.js 20+ is needed (node not found)" >&2; exit 2; }
  install client-js
  install scripts/asyncapi
  (cd client-js && npm run --silent build)
}

demo() {
  ensure
  rm -rf handlers/static/client
  mkdir -p handlers/static/client
  cp client-js/dist/*.js handlers/static/client/
}

case "${1:-}" in
  ensure) ensure ;;
  demo) demo ;;
  *) echo "usage: $0 ensure|demo" >&2; exit 2 ;;
esac
