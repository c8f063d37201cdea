#!/usr/bin/env bash
# The test command (README; .ci/run calls it):
#
#   bash scripts/test.sh
#
# On a fresh Debian 12 machine it installs and starts what the tests need (PostgreSQL, RabbitMQ,
# Mosquitto, cargo-deb, Chromium; podman and promtool for their stages), then runs formatting,
# lints, the test suite against the real servers, and the optional suites whose scripts exist
# (packaging, fault, Prometheus rules, container image, browser, benchmark).
# Where the servers already run it leaves them alone. Every stage runs even after a failure (set
# FAIL_FAST=1 to stop at the first one); the exit status is non-zero when any stage failed. The
# last line is "N passed, N failed", counting stages.
#
# Environment passed to the tests (preset values are kept):
#   TEST_PG_HOST=127.0.0.1 TEST_PG_PORT=5432 TEST_PG_USER=postgres TEST_PG_PASSWORD=""
#   TEST_RABBITMQ_HOST=127.0.0.1 TEST_RABBITMQ_PORT=5672 TEST_RABBITMQ_USER=guest TEST_RABBITMQ_PASSWORD=guest
#   TEST_MQTT_HOST=127.0.0.1 TEST_MQTT_PORT=1883
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RS_LOG_TAG="test"

export TEST_PG_HOST="${TEST_PG_HOST:-127.0.0.1}"
export TEST_PG_PORT="${TEST_PG_PORT:-${RS_PG_PORT:-5432}}"
export TEST_PG_USER="${TEST_PG_USER:-postgres}"
export TEST_PG_PASSWORD="${TEST_PG_PASSWORD:-}"
export TEST_RABBITMQ_HOST="${TEST_RABBITMQ_HOST:-127.0.0.1}"
export TEST_RABBITMQ_PORT="${TEST_RABBITMQ_PORT:-${RS_RABBITMQ_PORT:-5672}}"
export TEST_RABBITMQ_USER="${TEST_RABBITMQ_USER:-guest}"
export TEST_RABBITMQ_PASSWORD="${TEST_RABBITMQ_PASSWORD:-guest}"
export TEST_MQTT_HOST="${TEST_MQTT_HOST:-127.0.0.1}"
export TEST_MQTT_PORT="${TEST_MQTT_PORT:-${RS_MQTT_PORT:-1883}}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Stages run in child shells; this file tells them `apt-get update` already ran.
RS_APT_STAMP=$(mktemp)
export RS_APT_STAMP
trap 'rm -f "$RS_APT_STAMP"' EXIT

# Stage bodies that are more than one command; exported so the stage shells see them.
check_compose() {
    need_apt python3-yaml
    /usr/bin/python3 scripts/check-compose.py
}
build_deps() {
    ensure_build_deps
    ensure_rust_components
    # tests/it/clock.rs starts the binary with a clock in the past under libfaketime.
    need_apt faketime
    # tests/it/fence.rs runs a real pg_auto_failover formation (a monitor and two nodes).
    need_apt postgresql-15-auto-failover pg-auto-failover-cli
}
export -f check_compose build_deps

STAGE_NAMES=()
STAGE_RESULTS=()
STAGE_SECONDS=()
STAGE_NOTES=()
FAILED=0
PASSED=0

# stage NAME LIMIT_SECONDS CMD [ARG...]: run CMD (a command or a function of scripts/lib.sh or
# this file) in a child shell with `set -euo pipefail`, no stdin, and a time limit.
stage() {
    local name=$1 limit=$2 start rc secs result
    shift 2
    if [[ -n "${FAIL_FAST:-}" && $FAILED -gt 0 ]]; then
        record "$name" skip 0 "(FAIL_FAST: an earlier stage failed)"
        return 0
    fi
    printf '\n==================== %s ====================\n' "$name"
    printf '$ %s\n' "$*"
    start=$(date +%s)
    set +e
    # shellcheck disable=SC2016 # expanded by the child shell
    timeout -k 30 "$limit" bash -c 'set -euo pipefail; source scripts/lib.sh; "$@"' "$name" "$@" </dev/null
    rc=$?
    set -e
    secs=$(($(date +%s) - start))
    if [[ $rc -eq 0 ]]; then
        result=pass
        PASSED=$((PASSED + 1))
    else
        result=fail
        FAILED=$((FAILED + 1))
        if [[ $rc -eq 124 || $rc -eq 137 ]]; then
            log "stage '$name' timed out after ${limit}s"
        else
            log "stage '$name' failed (exit $rc)"
        fi
    fi
    printf -- '---- %s: %s (%ss)\n' "$name" "$result" "$secs"
    record "$name" "$result" "$secs"
}

# optional_stage NAME LIMIT_SECONDS SCRIPT [ARG...]: a stage that runs only when SCRIPT exists.
optional_stage() {
    local name=$1 limit=$2 script=$3
    shift 3
    if [[ -f "$script" ]]; then
        stage "$name" "$limit" bash "$script" "$@"
    else
        record "$name" skip 0 "($script not present)"
    fi
}

record() {
    STAGE_NAMES+=("$1")
    STAGE_RESULTS+=("$2")
    STAGE_SECONDS+=("$3")
    STAGE_NOTES+=("${4:-}")
}

total_start=$(date +%s)

stage postgresql 600 ensure_postgres
stage rabbitmq 600 ensure_rabbitmq
stage mosquitto 600 ensure_mosquitto
stage build-deps 900 build_deps
stage cargo-deb 1200 ensure_tools
stage chromium 900 ensure_chromium
stage fmt 300 cargo fmt --all -- --check
stage compose 300 check_compose
stage clippy 1800 cargo clippy --all-targets -- -D warnings
stage test 1800 cargo test --all-targets --no-fail-fast
optional_stage deb 1200 packaging/test-deb.sh
# Warm (box image and previous release cached under /var/cache): about 8 min; cold: debootstrap
# and the previous release's build add 15-30 min on a busy 2-core machine.
optional_stage systemd 2700 packaging/test-systemd.sh
# Not a CI stage: packaging/test-powercut.sh (issue 21, docs/power-cut.md), a whole Debian 12 VM
# under qemu (TCG here) that loses power under load, about 8-10 min. On an idle host it passed
# 15/0 twice, then failed two runs in four (2026-12-08): after the PostgreSQL cut 2-3 orders
# stayed in cooking because RabbitMQ's v2 queue index deleted a torn segment file with their
# confirmed, unacked messages (docs/power-cut.md). Not fixed yet, so not in CI. By hand:
#   sudo packaging/test-powercut.sh
# Three boxes as systemd-nspawn containers on a RabbitMQ cluster and pg_auto_failover, each cut
# in turn under a POS load, then a network split (issue 25, docs/multi-box.md): about 8 min with
# the box image cached. Before [cluster] monitor it lost orders answered 200 when the primary's
# box booted back inside the failover; tests/it/fence.rs shows the fence on a real formation.
optional_stage multibox 1800 packaging/test-multibox.sh
optional_stage fault 1800 tests/fault/run.sh
optional_stage prometheus 600 tests/prometheus/run.sh
optional_stage container 1200 tests/container/run.sh
optional_stage api-fuzz 900 tests/api-fuzz/run.sh
optional_stage browser 900 tests/browser/run.sh
optional_stage bench 900 bench/run.sh --short

total=$(($(date +%s) - total_start))
printf '\n==================== summary ====================\n'
printf '%-12s %-6s %8s\n' stage result seconds
for i in "${!STAGE_NAMES[@]}"; do
    printf '%-12s %-6s %8s  %s\n' "${STAGE_NAMES[$i]}" "${STAGE_RESULTS[$i]}" "${STAGE_SECONDS[$i]}" "${STAGE_NOTES[$i]}"
done
printf '%-12s %-6s %8s\n' total "" "$total"
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
