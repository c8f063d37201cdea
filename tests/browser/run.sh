#!/usr/bin/env bash
# Browser test of the kitchen display page (issue 4): headless Debian Chromium, driven by
# playwright-core, against the whole system started by display.test.mjs itself (private
# Mosquitto with a WebSockets listener, a fresh RabbitMQ vhost, restaurant-system --mode=all on
# SQLite). Installs what is missing: chromium, mosquitto, node/npm (apt), the pinned npm packages.
#
#   tests/browser/run.sh            (RS_BIN=path/to/restaurant-system to pick the binary)
#
# Needs a built binary (cargo build [--release]); it saves docs/display-board.png.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=../../scripts/lib.sh
source "$root/scripts/lib.sh"

ensure_chromium
need_apt mosquitto
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || need_apt nodejs npm
ensure_rabbitmq # the test creates (and deletes) its own vhost there
command -v rabbitmqctl >/dev/null 2>&1 || die "rabbitmqctl not found (apt-get install rabbitmq-server)"

if [[ -z "${RS_BIN:-}" && ! -x "$root/target/release/restaurant-system" && ! -x "$root/target/debug/restaurant-system" ]]; then
    die "no restaurant-system binary: run 'cargo build' (or set RS_BIN)"
fi

cd "$here"
log "npm ci (tests/browser)"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
exec node display.test.mjs
