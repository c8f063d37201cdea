#!/usr/bin/env bash
# Checks the example Prometheus files in packaging/prometheus/ with promtool (from Debian's
# `prometheus` package, installed when missing): the scrape config, the alert rules, and the
# rules' unit tests (restaurant-alerts.test.yml: each alert fires when it should and not before).
#
#   bash tests/prometheus/run.sh
#
# scripts/test.sh runs it as its "prometheus" stage. The last line is "N passed, N failed".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RS_LOG_TAG="prometheus"

command -v promtool >/dev/null 2>&1 || need_apt prometheus
command -v promtool >/dev/null 2>&1 || die "promtool is missing although the prometheus package is installed"

passed=0
failed=0
run() {
    local what=$1
    shift
    printf '$ %s\n' "$*"
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        log "FAIL: $what"
    fi
}
cd packaging/prometheus
run "alert rules are valid" promtool check rules restaurant-alerts.yml
run "alert rules behave as their unit tests say" promtool test rules restaurant-alerts.test.yml
run "scrape config is valid" promtool check config --syntax-only prometheus.yml
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
