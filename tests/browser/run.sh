#!/usr/bin/env bash
# Browser tests of the kitchen display page (issue 4), in headless Debian Chromium driven by
# playwright-core:
#   page.test.mjs     the page's own logic: web/dist served like /display, a private Mosquitto,
#                     retained payloads published by the test (no Rust services needed); with
#                     [cluster] boxes, the move to a second box's broker when the first stops
#                     answering (issue 25)
#   kds.test.mjs      issue 13's pages the same way: ticket notes/modifiers/allergens, 40 open
#                     orders at 1920x1080 and 1280x800 with nothing hidden without a "+N more"
#                     marker, the header's ticket time, the customer board (/board); saves
#                     target/kds-board-*.png and target/customer-board.png
#   stations.test.mjs issue 24's station and expo screens the same way: a station's items only,
#                     "also at", rush order, item bump with undo, station bump, reload, expo
#                     states/send/rush, 40 orders at 1920x1080; saves target/kds-station-*.png
#                     and target/kds-expo-*.png
#   expo.test.mjs     the whole system with [stations] (grill, fry, bar): three station screens,
#                     expo and the customer board at once; ready only after the last station's
#                     bump; a reload mid-way; rush; 40 orders; WCAG 2 AA; saves
#                     target/system-station-grill-1920x1080.png, target/system-expo-1920x1080.png
#                     (DOCS_SHOTS=1: docs/kds-station.png for the README)
#   tls.test.mjs      issue 27: the whole system with [tls] mode = "self-signed", the box's CA
#                     trusted in an NSS database: the kitchen display (paired, CA fingerprint
#                     shown) and the customer board over HTTPS, tickets over wss://, a bump
#   display.test.mjs  the whole system, started by the test itself (private Mosquitto with a
#                     WebSockets listener, a fresh RabbitMQ vhost, restaurant-system --mode=all
#                     on SQLite); saves target/display-board.png (SCREENSHOT=docs/display-board.png to refresh the README one)
# Every screen is also checked with axe-core's WCAG 2 A/AA rules (lib.mjs assertAccessible).
# Installs what is missing: chromium, mosquitto, node/npm (apt), the pinned npm packages.
#
#   tests/browser/run.sh                 both (RS_BIN=path/to/restaurant-system picks the binary)
#   tests/browser/run.sh page|kds|stations|display|expo   one of them
#
# The whole-system test needs a built binary (cargo build [--release]).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=../../scripts/lib.sh
source "$root/scripts/lib.sh"

ensure_chromium
need_apt mosquitto
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || need_apt nodejs npm

which=${1:-all}
case "$which" in
    all) suites=(page kds stations display expo tls) ;;
    page | kds | stations | display | expo | tls) suites=("$which") ;;
    *) die "usage: tests/browser/run.sh [all|page|kds|stations|display|expo|tls]" ;;
esac

if [[ " ${suites[*]} " == *" tls "* ]]; then
    need_apt libnss3-tools openssl # certutil: the screen trusts the box's CA
fi
if [[ " ${suites[*]} " == *" display "* || " ${suites[*]} " == *" expo "* || " ${suites[*]} " == *" tls "* ]]; then
    ensure_rabbitmq # the whole-system test creates (and deletes) its own vhost there
    command -v rabbitmqctl >/dev/null 2>&1 || die "rabbitmqctl not found (apt-get install rabbitmq-server)"
    if [[ -n "${RS_BIN:-}" ]]; then
        [[ -x "$RS_BIN" ]] || die "RS_BIN=$RS_BIN is not an executable file"
    elif [[ ! -x "$root/target/release/restaurant-system" && ! -x "$root/target/debug/restaurant-system" ]]; then
        die "no restaurant-system binary: run 'cargo build' (or set RS_BIN)"
    fi
fi

cd "$here"
log "npm ci (tests/browser)"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

# Run each suite, keep its output, and add up the "N passed, N failed[, N skipped]" lines.
passed=0 failed=0 skipped=0 rc=0
for suite in "${suites[@]}"; do
    out="$(mktemp)"
    log "node $suite.test.mjs"
    set +e
    node "$suite.test.mjs" 2>&1 | tee "$out"
    status=${PIPESTATUS[0]}
    set -e
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1 || true)
    rm -f "$out"
    if [[ -z "$line" ]]; then
        log "$suite.test.mjs printed no summary (exit $status)"
        failed=$((failed + 1))
    else
        read -r p f s <<<"$(sed -E 's/^([0-9]+) passed, ([0-9]+) failed(, ([0-9]+) skipped)?.*/\1 \2 \4/' <<<"$line")"
        passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + ${s:-0}))
    fi
    [[ $status -eq 0 ]] || rc=1
done
if [[ $skipped -gt 0 ]]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
exit "$rc"
