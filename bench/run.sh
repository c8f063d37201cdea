#!/usr/bin/env bash
# The benchmark (issue 7), one command:
#
#   bash bench/run.sh            # full run (about 15-25 minutes), recorded in docs/BENCHMARKS.md
#   bash bench/run.sh --short    # a few seconds per step (CI: scripts/test.sh runs it)
#   bash bench/run.sh --one-core # only the one-core profile (bench/one-core.sh; a full run ends with it)
#   bash bench/run.sh --pressure # only wrk overload, relay backlog and a flood (bench/pressure.sh; a full run has it)
#
# It installs and starts what it needs when missing (PostgreSQL with pgbench, RabbitMQ, Mosquitto;
# see scripts/lib.sh), builds the release binary and the benchmark program (examples/bench), and
# runs it twice: for PostgreSQL and then SQLite, the limit the machine gives (bench/order_tx.sql
# through pgbench; the library SQLite store, one order at a time), then the real binary on a fresh database and a fresh RabbitMQ
# vhost under open-loop load: first with --mode=all, then the intake alone (--intake-only). Figures are printed, written as JSON to target/bench/ and,
# for a full run, recorded in docs/BENCHMARKS.md by bench/record.sh (the latest run on top, a line of history). It asserts nothing about speed; it fails only when
# it could not measure. Any other flag is passed to the program (see
# `target/release/examples/bench --help`), e.g. --backends sqlite, --rates 100,500, --step-seconds 5.
#
# Environment (all optional): TEST_PG_HOST/PORT/USER/PASSWORD, TEST_RABBITMQ_HOST/PORT/USER/PASSWORD,
# TEST_MQTT_HOST/PORT (defaults: the local servers), BENCH_NOTE (recorded with the run),
# BENCH_DOC (where a full run is recorded; empty: nowhere).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RS_LOG_TAG="bench"

short=0
one_core=0
pressure=0
pass=()
for arg in "$@"; do
    case "$arg" in
    --short) short=1 ;;
    --one-core) one_core=1 ;;
    --pressure) pressure=1 ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *) pass+=("$arg") ;;
    esac
done

export TEST_PG_HOST="${TEST_PG_HOST:-127.0.0.1}"
export TEST_PG_PORT="${TEST_PG_PORT:-${RS_PG_PORT:-5432}}"
export TEST_PG_USER="${TEST_PG_USER:-postgres}"
export TEST_RABBITMQ_HOST="${TEST_RABBITMQ_HOST:-127.0.0.1}"
export TEST_RABBITMQ_PORT="${TEST_RABBITMQ_PORT:-${RS_RABBITMQ_PORT:-5672}}"
export TEST_RABBITMQ_USER="${TEST_RABBITMQ_USER:-guest}"
export TEST_RABBITMQ_PASSWORD="${TEST_RABBITMQ_PASSWORD:-guest}"
export TEST_MQTT_HOST="${TEST_MQTT_HOST:-127.0.0.1}"
export TEST_MQTT_PORT="${TEST_MQTT_PORT:-${RS_MQTT_PORT:-1883}}"

# The servers (only the local ones are managed; remote ones must already run).
[[ "$TEST_PG_HOST" == 127.0.0.1 || "$TEST_PG_HOST" == localhost ]] && ensure_postgres
[[ "$TEST_RABBITMQ_HOST" == 127.0.0.1 || "$TEST_RABBITMQ_HOST" == localhost ]] && ensure_rabbitmq
[[ "$TEST_MQTT_HOST" == 127.0.0.1 || "$TEST_MQTT_HOST" == localhost ]] && ensure_mosquitto
command -v pgbench >/dev/null 2>&1 || need_apt postgresql-client
command -v rabbitmqctl >/dev/null 2>&1 ||
    die "rabbitmqctl not found: the benchmark makes a private vhost with it (apt-get install rabbitmq-server)"
[[ ${EUID} -eq 0 ]] || log "not root: rabbitmqctl may refuse to run (it reads the Erlang cookie of root/rabbitmq)"

ensure_cargo
ensure_build_deps
log "building the release binary and the benchmark (cargo build --release --bin restaurant-system --example bench)"
cargo build --release --bin restaurant-system --example bench || die "cargo build --release failed"

commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain -- src migrations Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
    commit="$commit+uncommitted"
fi
export BENCH_COMMIT="$commit"

# The one-core profile (issue 15): the servers and the daemon on one CPU, the load on the other.
# It records itself (bench/one-core.sh --doc goes through bench/record.sh).
doc="${BENCH_DOC-docs/BENCHMARKS.md}"
one_core_args=()
[[ $short -eq 1 ]] && one_core_args+=(--short)
[[ $short -eq 0 && -n "$doc" ]] && one_core_args+=(--doc "$doc")
if [[ $one_core -eq 1 ]]; then
    exec bash bench/one-core.sh "${one_core_args[@]}"
fi
# Under pressure (issue 22): wrk -t2 -c64 10 s and a flood of 3,000 connections per backend.
if [[ $pressure -eq 1 ]]; then
    exec bash bench/pressure.sh
fi

# The program appends each pass's summary to a file of this run's; bench/record.sh then puts both
# passes on top of the doc and adds their history lines.
mkdir -p target/bench
run_md=target/bench/run-summary.md
rm -f "$run_md"
args=(--bin target/release/restaurant-system --out target/bench --pgbench-script bench/order_tx.sql)
if [[ $short -eq 1 ]]; then
    args+=(--short)
elif [[ -n "$doc" ]]; then
    args+=(--doc "$run_md")
fi
# Two passes, each with the limits of its own moment: the whole system (--mode=all: intake, kitchen
# at cooking time 0, notifier, display bridge in one process), then the intake alone
# (--mode=order-service with its outbox relay), which is what the intake targets are about once the
# kitchen's backlog no longer shares the two cores. Flags given here go to both passes.
log "target/release/examples/bench ${args[*]} ${pass[*]:-}"
target/release/examples/bench "${args[@]}" "${pass[@]}"
intake=(--intake-only)
[[ $short -eq 1 ]] && intake+=(--rates 500,1000 --burst 100)
log "target/release/examples/bench ${args[*]} ${intake[*]} ${pass[*]:-}"
target/release/examples/bench "${args[@]}" "${intake[@]}" "${pass[@]}"
if [[ $short -eq 0 && -n "$doc" ]]; then
    bash bench/record.sh "$run_md" "$doc"
fi
if [[ $short -eq 0 ]]; then
    log "under pressure (bench/pressure.sh)"
    bash bench/pressure.sh
    log "the one-core profile (bench/one-core.sh ${one_core_args[*]})"
    bash bench/one-core.sh "${one_core_args[@]}"
fi
