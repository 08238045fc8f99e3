#!/usr/bin/env bash
# A real browser for the end-to-end tests: Debian's chromium and chromium-driver
# (Playwright's own browser download does not work from this network).
#
#   scripts/chromium.sh ensure    install both packages if /usr/bin/chromium is missing
set -euo pipefail
source "$(dirname "$0")/apt.sh"

ensure() {
  if [[ -x /usr/bin/chromium ]]; then return; fi
  echo "chromium.sh: installing chromium and chromium-driver (apt)"
  apt_install chromium chromium-driver
  /usr/bin/chromium --version 2>/dev/null  # the Debian wrapper prints a harmless shell warning
}

case "${1:-}" in
  ensure) ensure ;;
  *) echo "usage: $0 ensure" >&2; exit 2 ;;
esac
