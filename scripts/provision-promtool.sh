#!/usr/bin/env bash
# Provision promtool for the checks of deploy/prometheus/ (test/deploy/prometheus.test.ts).
#
#   scripts/provision-promtool.sh     -> prints the absolute path of promtool on stdout
#
# Uses PROMTOOL_BIN, else promtool from PATH; otherwise installs Debian's prometheus package (which
# ships /usr/bin/promtool) with apt-get (needs root), without its recommends and without starting
# the package's Prometheus server: the tests only run promtool, which needs no server.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/debian-package.sh"

find_bin() { command -v promtool 2>/dev/null || { [[ -x /usr/bin/promtool ]] && echo /usr/bin/promtool; } || true; }

provision_debian_package promtool prometheus PROMTOOL_BIN find_bin --no-service --no-recommends
