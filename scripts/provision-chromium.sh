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
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/debian-package.sh"

find_bin() { { [[ -x /usr/lib/chromium/chromium ]] && echo /usr/lib/chromium/chromium; } || true; }

provision_debian_package chromium chromium CHROMIUM_BIN find_bin --no-recommends
