#!/usr/bin/env bash
# Provision a real Redis server for the cluster-mode tests.
#
#   scripts/provision-redis.sh        -> prints the absolute path of redis-server on stdout
#
# Uses REDIS_SERVER_BIN, else redis-server from PATH; otherwise installs Debian's redis-server
# package with apt-get (needs root), without starting the package's own service: the tests run
# their own servers on loopback with their own data directories.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/debian-package.sh"

find_bin() { command -v redis-server 2>/dev/null || { [[ -x /usr/bin/redis-server ]] && echo /usr/bin/redis-server; } || true; }

provision_debian_package redis redis-server REDIS_SERVER_BIN find_bin --no-service
