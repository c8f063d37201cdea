#!/usr/bin/env bash
# The fault suite, issue 6 scenarios 1-3 (tests/it/fault.rs): RabbitMQ restart, PostgreSQL restart
# and kitchen-worker SIGKILL, each under load, with one summary line per scenario; and issue 14's
# scenario 4: the order service aborting between a commit and its answer
# (RESTAURANT_FAILPOINT=crash_after_commit:N), and PostgreSQL restarting, under load whose clients
# retry with an Idempotency-Key (every order exactly once).
#
#   bash tests/fault/run.sh            # every scenario (about 3 minutes)
#   bash tests/fault/run.sh broker     # only the tests whose name contains "broker"
#
# scripts/test.sh runs it as its optional "fault" stage. It needs root (the private RabbitMQ node
# runs as the rabbitmq user, the private PostgreSQL cluster as postgres), the rabbitmq-server and
# postgresql packages, and the shared PostgreSQL and RabbitMQ (which lend a private database and
# vhost to the scenarios that do not restart a server). The servers it restarts are its own:
# started on free ports in /tmp and removed at the end, never the shared ones.
# Process logs: target/tmp/fault-logs/<scenario>/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RS_LOG_TAG="fault"

[[ ${EUID} -eq 0 ]] || die "the fault suite needs root (private RabbitMQ and PostgreSQL servers run as their own users)"
# Idempotent: nothing happens when they already run (scripts/test.sh started them).
ensure_postgres
ensure_rabbitmq

summary="${CARGO_TARGET_DIR:-target}/tmp/fault-summary.txt"
mkdir -p "$(dirname "$summary")"
rm -f "$summary"

# The scenarios are the module `fault::` of the one integration-test binary (tests/it). An
# argument keeps the fault tests whose name contains it: libtest's own filters would also pick
# other modules' tests that contain the word (they run too under --include-ignored).
filters=(fault::)
if [[ $# -gt 0 ]]; then
    cargo test --test it --no-run
    mapfile -t filters < <(cargo test -q --test it -- --list --include-ignored 2>/dev/null |
        sed -n 's/: test$//p' | grep '^fault::' | grep -F "${@/#/-e}" || true)
    [[ ${#filters[@]} -gt 0 ]] || die "no fault test's name contains: $*"
    filters=(--exact "${filters[@]}")
fi

start=$(date +%s)
set +e
cargo test --test it -- --include-ignored --test-threads=1 --nocapture "${filters[@]}"
rc=$?
set -e

printf '\nfault suite (%ss):\n' "$(($(date +%s) - start))"
if [[ -s "$summary" ]]; then
    cat "$summary"
else
    echo "(no scenario reported a summary line)"
fi
if [[ $rc -ne 0 ]]; then
    log "fault suite failed (exit $rc); process logs are in ${CARGO_TARGET_DIR:-target}/tmp/fault-logs/"
fi
exit "$rc"
