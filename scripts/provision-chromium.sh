#!/usr/bin/env bash
# Provision Debian's Chromium for the Element Call browser tests (test/e2e/element-call.test.ts).
#
#   scripts/provision-chromium.sh     -> prints the absolute path of the chromium binary on stdout
#
# Uses CHROMIUM_BIN, else an installed Debian chromium; otherwise installs Debian's chromium package
# with apt-get (needs root). Never downloads a browser build from anywhere else: Playwright
# (playwright-core) only drives this binary.
# The path printed is the browser itself, /usr/lib/chromium/chromium, not Debian's launcher script
# /usr/bin/chromium: the launcher sources /etc/chromium.d (Google API keys, remote extensions, which
# switch background networking back on), and the tests want a browser that talks to nothing but them.
# Progress and errors go to stderr; only the path goes to stdout.
set -euo pipefail

die() { echo "provision-chromium: $*" >&2; exit 1; }

if [[ -n "${CHROMIUM_BIN:-}" ]]; then
  [[ -x "$CHROMIUM_BIN" ]] || die "CHROMIUM_BIN=$CHROMIUM_BIN is not executable"
  echo "$CHROMIUM_BIN"
  exit 0
fi

find_bin() { { [[ -x /usr/lib/chromium/chromium ]] && echo /usr/lib/chromium/chromium; } || true; }

bin="$(find_bin)"
if [[ -n "$bin" ]]; then
  echo "$bin"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "chromium is not installed and there is no apt-get to install it"
[[ "$(id -u)" == 0 ]] || die "chromium is not installed and installing it needs root (apt-get install chromium)"

# Test files provision in parallel: one install at a time, the others wait and then find it done.
exec 9>/tmp/.lastwill-provision-chromium.lock
flock 9
bin="$(find_bin)"
if [[ -z "$bin" ]]; then
  echo "provision-chromium: installing Debian's chromium package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends chromium >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends chromium >&2; } \
    || die "apt-get install chromium failed"
  bin="$(find_bin)"
fi
[[ -n "$bin" ]] || die "chromium still not found after installing it"
echo "$bin"
