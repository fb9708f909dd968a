#!/usr/bin/env bash
# Provision a real Redis server for the cluster-mode tests.
#
#   scripts/provision-redis.sh        -> prints the absolute path of redis-server on stdout
#
# Uses redis-server from PATH (or REDIS_SERVER_BIN) when there is one; otherwise installs Debian's
# redis-server package with apt-get (needs root). The package's own service is not started: the
# tests run their own servers on loopback with their own data directories.
# Progress and errors go to stderr; only the path goes to stdout.
set -euo pipefail

die() { echo "provision-redis: $*" >&2; exit 1; }

if [[ -n "${REDIS_SERVER_BIN:-}" ]]; then
  [[ -x "$REDIS_SERVER_BIN" ]] || die "REDIS_SERVER_BIN=$REDIS_SERVER_BIN is not executable"
  echo "$REDIS_SERVER_BIN"
  exit 0
fi

find_bin() { command -v redis-server 2>/dev/null || { [[ -x /usr/bin/redis-server ]] && echo /usr/bin/redis-server; } || true; }

bin="$(find_bin)"
if [[ -n "$bin" ]]; then
  echo "$bin"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "redis-server is not installed and there is no apt-get to install it"
[[ "$(id -u)" == 0 ]] || die "redis-server is not installed and installing it needs root (apt-get install redis-server)"

# Test files provision in parallel: one install at a time, the others wait and then find it done.
exec 9>/tmp/.lastwill-provision-redis.lock
flock 9
bin="$(find_bin)"
if [[ -z "$bin" ]]; then
  echo "provision-redis: installing Debian's redis-server package" >&2
  export DEBIAN_FRONTEND=noninteractive
  # policy-rc.d keeps the package from starting its own service during the install.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [[ ! -e "$policy" ]]; then printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1; fi
  trap '[[ $created_policy == 1 ]] && rm -f "$policy"' EXIT
  apt-get install -y -q redis-server >&2 || { apt-get update -q >&2 && apt-get install -y -q redis-server >&2; } || die "apt-get install redis-server failed"
  bin="$(find_bin)"
fi
[[ -n "$bin" ]] || die "redis-server still not found after installing it"
echo "$bin"
