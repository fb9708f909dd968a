#!/usr/bin/env bash
# Provision a real LiveKit server binary for end-to-end tests.
#
#   scripts/provision-livekit.sh        -> prints the absolute path of the binary on stdout
#
# Builds github.com/livekit/livekit-server/cmd/server at a pinned tag with `go install`
# into <repo>/.cache/bin (git-ignored). Idempotent: if the binary exists and
# `go version -m` says it was built from the pinned module version, nothing is done.
#
# Why v1.13.5: `go install pkg@version` refuses modules with `replace` directives in
# go.mod; master and v1.13.0 have them, v1.13.5 has none. Never use @latest/@master.
# It needs Go >= 1.26 (go.mod says `go 1.26`).
#
# Environment:
#   LIVEKIT_VERSION   override the tag (default v1.13.5)
#   LASTWILL_CACHE    override the cache dir (default <repo>/.cache)
# Progress and errors go to stderr; only the binary path goes to stdout.
set -euo pipefail

LIVEKIT_VERSION="${LIVEKIT_VERSION:-v1.13.5}"
MIN_GO_MAJOR=1
MIN_GO_MINOR=26
MODULE="github.com/livekit/livekit-server"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${LASTWILL_CACHE:-$repo/.cache}"
bindir="$cache/bin"
bin="$bindir/server"       # the name `go install .../cmd/server` gives it

die() { echo "provision-livekit: $*" >&2; exit 1; }

# Test files provision in parallel: one run at a time per cache, the others wait and then find it done.
mkdir -p "$cache"
exec 9>"$cache/.provision-livekit.lock"
flock 9

if ! command -v go >/dev/null 2>&1; then
  die "Go is not installed (need Go >= ${MIN_GO_MAJOR}.${MIN_GO_MINOR} to build livekit-server ${LIVEKIT_VERSION}). Install Go, or skip the e2e tests."
fi

gover="$(go env GOVERSION 2>/dev/null || true)"          # e.g. go1.26.8
[[ "$gover" =~ ^go([0-9]+)\.([0-9]+) ]] || die "cannot parse Go version '$gover'"
major="${BASH_REMATCH[1]}"; minor="${BASH_REMATCH[2]}"
if (( major < MIN_GO_MAJOR || (major == MIN_GO_MAJOR && minor < MIN_GO_MINOR) )); then
  die "Go $gover is too old: livekit-server ${LIVEKIT_VERSION} needs Go >= ${MIN_GO_MAJOR}.${MIN_GO_MINOR}."
fi

built_version() {
  # `go version -m` prints a line like: "\tmod\tgithub.com/livekit/livekit-server\tv1.13.5\th1:..."
  go version -m "$1" 2>/dev/null | awk -v m="$MODULE" '$1=="mod" && $2==m {print $3; exit}'
}

if [[ -x "$bin" ]] && [[ "$(built_version "$bin")" == "$LIVEKIT_VERSION" ]]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bindir"
# Build into a private GOBIN first so a concurrent run or an interrupted build never
# leaves a half-written binary at the final path.
tmpbin="$(mktemp -d "$bindir/.build.XXXXXX")"
trap 'rm -rf "$tmpbin"' EXIT
echo "provision-livekit: building ${MODULE}/cmd/server@${LIVEKIT_VERSION} with $gover (cold builds take minutes) ..." >&2
start=$(date +%s)
GOBIN="$tmpbin" GOFLAGS="${GOFLAGS:-} -trimpath" go install "${MODULE}/cmd/server@${LIVEKIT_VERSION}" >&2 \
  || die "go install ${MODULE}/cmd/server@${LIVEKIT_VERSION} failed (if the checksum database is unreachable, try GONOSUMDB=github.com/livekit)"
mv -f "$tmpbin/server" "$bin"
echo "provision-livekit: built in $(( $(date +%s) - start ))s -> $bin" >&2

v="$(built_version "$bin")"
[[ "$v" == "$LIVEKIT_VERSION" ]] || die "built binary reports module version '$v', expected $LIVEKIT_VERSION"
echo "$bin"
