#!/usr/bin/env bash
# A real browser for the end-to-end tests: Debian's chromium and chromium-driver
# (Playwright's own browser download does not work from this network).
#
#   scripts/chromium.sh ensure    install both packages if /usr/bin/chromium is missing
set -euo pipefail

ensure() {
  if [[ -x /usr/bin/chromium ]]; then return; fi
  echo "chromium.sh: installing chromium and chromium-driver (apt)"
  # Non-interactive, and wait for the dpkg lock rather than fail if another install is running.
  # No recommends: they are desktop services (upower, notification-daemon, printer setup).
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  /usr/bin/chromium --version 2>/dev/null  # the Debian wrapper prints a harmless shell warning
}

case "${1:-}" in
  ensure) ensure ;;
  *) echo "usage: $0 ensure" >&2; exit 2 ;;
esac
