#!/usr/bin/env bash
# actionlint (the GitHub Actions workflow linter), built from Go modules into a versioned cache
# directory outside the repo, then run on .github/workflows/*.yml. Used by `make lint`.
#
#   hack/actionlint.sh build        build the binary (a no-op when it is there); prints its path
#   hack/actionlint.sh [ARGS...]    build if missing, then run it on the workflows (extra args are
#                                   passed on, e.g. -format '{{json .}}')
#
# A cold build (empty Go module and build caches) takes about 35 s on 2 cores: one small module
# (testenv/go/actionlint, go.mod + go.sum committed) and a 6 MB binary.
# shellcheck and pyflakes are used for `run:` scripts when they are on PATH (actionlint's default).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=../testenv/versions.env
source "$here/testenv/versions.env"
cache=${APWA_CACHE_DIR:-$HOME/.cache/apwa}
bin="$cache/actionlint-${ACTIONLINT_VERSION}/bin/actionlint"
mod="$here/testenv/go/actionlint"
log() { printf '[actionlint] %s\n' "$*" >&2; }

build() {
  [ -x "$bin" ] && return 0
  # The wrapper module must pin the version of versions.env (which names the cache directory).
  grep -q "github.com/rhysd/actionlint $ACTIONLINT_VERSION\b" "$mod/go.mod" ||
    { log "$mod/go.mod does not require actionlint $ACTIONLINT_VERSION (testenv/versions.env)"; return 1; }
  command -v go >/dev/null || [ ! -x /usr/local/go/bin/go ] || PATH="/usr/local/go/bin:$PATH"
  command -v go >/dev/null || { log "go not found: install Go (1.26) to build actionlint"; return 1; }
  log "building actionlint $ACTIONLINT_VERSION (about 35 s cold on 2 cores)"
  mkdir -p "$(dirname "$bin")"
  (cd "$mod" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
    go build -trimpath -ldflags "-s -w" -o "$bin.tmp" github.com/rhysd/actionlint/cmd/actionlint)
  mv "$bin.tmp" "$bin"
}

case "${1:-}" in
  build) build; echo "$bin" ;;
  *)
    build
    cd "$here"
    shopt -s nullglob
    workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
    [ ${#workflows[@]} -gt 0 ] || { log "no workflows under .github/workflows"; exit 0; }
    exec "$bin" "$@" "${workflows[@]}"
    ;;
esac
