#!/usr/bin/env bash
# Provision a pinned Synapse (reference Matrix homeserver) for end-to-end tests.
#
#   scripts/provision-synapse.sh        -> prints the absolute path of the venv's python on stdout
#
# Creates an idempotent virtualenv at <repo>/.cache/synapse-venv (git-ignored) with
# matrix-synapse pinned. If the venv already has exactly that version, nothing is done.
# Pin: 1.157.1 is the release the MSC4140 notes in shared/reference/synapse.md were read at.
#
# Environment:
#   SYNAPSE_VERSION   override the pin (default 1.157.1)
#   PYTHON            interpreter to build the venv with (default python3; needs >= 3.10)
#   LASTWILL_CACHE    override the cache dir (default <repo>/.cache)
# Progress and errors go to stderr; only the python path goes to stdout.
set -euo pipefail

SYNAPSE_VERSION="${SYNAPSE_VERSION:-1.157.1}"
PYTHON="${PYTHON:-python3}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${LASTWILL_CACHE:-$repo/.cache}"
venv="$cache/synapse-venv"
py="$venv/bin/python"

die() { echo "provision-synapse: $*" >&2; exit 1; }

# Test files provision in parallel: one run at a time per cache, the others wait and then find it done.
mkdir -p "$cache"
exec 9>"$cache/.provision-synapse.lock"
flock 9

installed_version() {
  "$py" -c 'import importlib.metadata as m; print(m.version("matrix-synapse"))' 2>/dev/null || true
}

if [[ -x "$py" ]] && [[ "$(installed_version)" == "$SYNAPSE_VERSION" ]]; then
  echo "$py"
  exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "Python ($PYTHON) is not installed; Synapse needs Python >= 3.10."
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "$("$PYTHON" --version 2>&1) is too old; Synapse ${SYNAPSE_VERSION} needs Python >= 3.10."
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$PYTHON lacks the venv/ensurepip modules (Debian: apt-get install python3-venv)."

mkdir -p "$cache"
if [[ ! -x "$py" ]]; then
  echo "provision-synapse: creating venv $venv" >&2
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv" >&2 || die "python -m venv failed"
fi
echo "provision-synapse: installing matrix-synapse==${SYNAPSE_VERSION} ..." >&2
start=$(date +%s)
"$py" -m pip install --disable-pip-version-check --quiet "matrix-synapse==${SYNAPSE_VERSION}" >&2 \
  || die "pip install matrix-synapse==${SYNAPSE_VERSION} failed"
v="$(installed_version)"
[[ "$v" == "$SYNAPSE_VERSION" ]] || die "venv reports matrix-synapse '$v', expected $SYNAPSE_VERSION"
echo "provision-synapse: installed in $(( $(date +%s) - start ))s" >&2
echo "$py"
