#!/usr/bin/env bash
# Under pressure (issue 22): the real binary's order service under closed-loop overload, as a
# new user measures it, per backend:
#
#   bash bench/run.sh --pressure                  # this script, after the usual release build
#   bash bench/pressure.sh [--bin PATH] [--backends postgres,sqlite] [--seconds 10]
#                          [--connections 64] [--flood 3000] [--out DIR]
#
# 1. `wrk -t2 -cCONNECTIONS -dSECONDS` posting the spec's orders (bench/pressure.lua) to a fresh
#    `--mode=order-service` (fresh database and RabbitMQ vhost, default settings): requests,
#    answers by status, socket errors, p50/p99 latency; the intake rate (orders stored per second)
#    and the relay rate (outbox rows published per second during the load: stored minus still
#    waiting at the stop), and the outbox backlog at the stop, 1 s and 3 s after it (target: empty
#    1 s after).
# 2. A flood: the same with FLOOD connections (default 3,000, over `[http] max_connections`):
#    answers by status (every one should be 2xx or a clean 503), socket errors, and the daemon's
#    RSS before, at its peak (sampled every 0.2 s) and after.
# wrk is closed loop (a slow answer delays that connection's next request): these are the issue's
# figures, not the open-loop latencies of examples/bench. Nothing is asserted; the figures are
# printed and written as JSON to DIR (target/bench). Needs PostgreSQL, RabbitMQ (rabbitmqctl)
# and wrk; TEST_PG_* / TEST_RABBITMQ_* as for bench/run.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RS_LOG_TAG="pressure"

bin=target/release/restaurant-system
backends=postgres,sqlite
seconds=10
connections=64
flood=3000
out=target/bench
while [[ $# -gt 0 ]]; do
    case "$1" in
    --bin) bin=$2; shift ;;
    --backends) backends=$2; shift ;;
    --seconds) seconds=$2; shift ;;
    --connections) connections=$2; shift ;;
    --flood) flood=$2; shift ;;
    --out) out=$2; shift ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown flag $1 (see --help)" ;;
    esac
    shift
done
[[ -x $bin ]] || die "no binary at $bin (cargo build --release --bin restaurant-system)"
command -v wrk >/dev/null 2>&1 || need_apt wrk
command -v jq >/dev/null 2>&1 || need_apt jq
command -v sqlite3 >/dev/null 2>&1 || need_apt sqlite3
# wrk and the daemon each hold a descriptor per connection.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
(($(ulimit -n) > flood + 100)) || die "ulimit -n is $(ulimit -n): too low for a flood of $flood connections"

pg_host=${TEST_PG_HOST:-127.0.0.1}
pg_port=${TEST_PG_PORT:-${RS_PG_PORT:-5432}}
pg_user=${TEST_PG_USER:-postgres}
mkdir -p "$out"
work=$(mktemp -d /tmp/rs-pressure.XXXXXX)
daemon_pid=""
db=""
vhost=""
cleanup() {
    set +e
    [[ -n "$daemon_pid" ]] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    [[ -n "$db" ]] && psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -qc "drop database if exists $db" >/dev/null 2>&1
    [[ -n "$vhost" ]] && rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
now_s() { date +%s.%N; }
rss_kb() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$daemon_pid/status"; }
hwm_kb() { awk '$1 == "VmHWM:" { print $2 }' "/proc/$daemon_pid/status"; }

# count BACKEND SQL: one number from the run's database.
count() {
    if [[ $1 == postgres ]]; then
        psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d "$db" -Atc "$2"
    else
        sqlite3 -readonly "$work/restaurant.db" ".timeout 5000" "$2"
    fi
}

# run_wrk CONNECTIONS PORT: the PRESSURE JSON line of one wrk run.
run_wrk() {
    wrk -t2 -c"$1" -d"${seconds}s" --timeout 10s -s bench/pressure.lua "http://127.0.0.1:$2" >"$work/wrk.out" 2>&1 ||
        die "wrk failed: $(tail -n 5 "$work/wrk.out")"
    grep '^PRESSURE ' "$work/wrk.out" | sed 's/^PRESSURE //' | tail -n 1
}

results=()
IFS=, read -r -a backend_list <<<"$backends"
for backend in "${backend_list[@]}"; do
    case "$backend" in postgres | sqlite) ;; *) die "unknown backend $backend" ;; esac
    vhost="rs_pressure_$$_$backend"
    rabbitmqctl -q add_vhost "$vhost" >/dev/null
    rabbitmqctl -q set_permissions -p "$vhost" "${TEST_RABBITMQ_USER:-guest}" '.*' '.*' '.*' >/dev/null
    denv=(RESTAURANT_DATABASE__BACKEND="$backend" RESTAURANT_RABBITMQ__HOST="${TEST_RABBITMQ_HOST:-127.0.0.1}"
        RESTAURANT_RABBITMQ__PORT="${TEST_RABBITMQ_PORT:-${RS_RABBITMQ_PORT:-5672}}"
        RESTAURANT_RABBITMQ__USER="${TEST_RABBITMQ_USER:-guest}"
        RESTAURANT_RABBITMQ__PASSWORD="${TEST_RABBITMQ_PASSWORD:-guest}" RESTAURANT_RABBITMQ__VHOST="$vhost"
        RESTAURANT_HTTP__BIND=127.0.0.1 RESTAURANT_LOG__FORMAT=json RESTAURANT_MQTT__ENABLED=false)
    if [[ $backend == postgres ]]; then
        db="rs_pressure_$$"
        psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -qc "create database $db" >/dev/null
        denv+=(RESTAURANT_DATABASE__HOST="$pg_host" RESTAURANT_DATABASE__PORT="$pg_port"
            RESTAURANT_DATABASE__USER="$pg_user" RESTAURANT_DATABASE__DATABASE="$db")
        [[ -n "${TEST_PG_PASSWORD:-}" ]] && denv+=(RESTAURANT_DATABASE__PASSWORD="$TEST_PG_PASSWORD")
    else
        denv+=(RESTAURANT_DATABASE__SQLITE_PATH="$work/restaurant.db")
    fi
    : >"$work/empty.toml"
    port=$(free_port)
    env "${denv[@]}" "$bin" --config "$work/empty.toml" --mode=order-service --port "$port" \
        >"$work/daemon-$backend.log" 2>&1 &
    daemon_pid=$!
    for ((i = 0; i < 600; i++)); do
        curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null && break
        kill -0 "$daemon_pid" 2>/dev/null || die "the daemon exited: $(tail -n 20 "$work/daemon-$backend.log")"
        sleep 0.1
    done
    load="$(cut -d' ' -f1-3 /proc/loadavg)"

    # 1. The issue's run: CONNECTIONS connections, SECONDS seconds.
    log "$backend: wrk -t2 -c$connections -d${seconds}s (load average before: $load)"
    rss0=$(rss_kb)
    t0=$(now_s)
    run=$(run_wrk "$connections" "$port")
    t1=$(now_s)
    backlog0=$(count "$backend" "select count(*) from outbox")
    orders=$(count "$backend" "select count(*) from orders")
    sleep "$(awk -v a="$t1" -v b="$(now_s)" 'BEGIN { d = 1 - (b - a); print (d > 0 ? d : 0) }')"
    backlog1=$(count "$backend" "select count(*) from outbox")
    sleep "$(awk -v a="$t1" -v b="$(now_s)" 'BEGIN { d = 3 - (b - a); print (d > 0 ? d : 0) }')"
    backlog3=$(count "$backend" "select count(*) from outbox")
    elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    log "$backend: $run; $orders orders stored, outbox $backlog0 at the stop, $backlog1 after 1 s, $backlog3 after 3 s"

    # 2. The flood.
    log "$backend: flood, wrk -t2 -c$flood -d${seconds}s"
    rss1=$(rss_kb)
    (while kill -0 "$daemon_pid" 2>/dev/null; do rss_kb; sleep 0.2; done) >"$work/rss-$backend" 2>/dev/null &
    sampler=$!
    flooded=$(run_wrk "$flood" "$port")
    sleep 1
    rss2=$(rss_kb)
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    peak=$(sort -n "$work/rss-$backend" | tail -n 1)
    hwm=$(hwm_kb)
    log "$backend: flood $flooded; RSS $rss1 kB before, peak $peak kB, $rss2 kB 1 s after (VmHWM $hwm kB)"

    kill -TERM "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=""
    results+=("$(jq -n --arg backend "$backend" --arg load "$load" --argjson run "$run" --argjson flood "$flooded" \
        --argjson elapsed "$elapsed" --argjson orders "$orders" --argjson b0 "$backlog0" --argjson b1 "$backlog1" \
        --argjson b3 "$backlog3" --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson rss2 "$rss2" \
        --argjson peak "${peak:-0}" --argjson hwm "$hwm" --argjson c "$connections" --argjson fc "$flood" '
        def failed(r): r.requests - ([r.statuses | to_entries[] | select(.key | startswith("2")) | .value] | add // 0)
            + r.errors.connect + r.errors.read + r.errors.write + r.errors.timeout;
        { backend: $backend, load_average_before: $load,
          run: ($run + { connections: $c, failed: failed($run), elapsed_s: $elapsed, orders_stored: $orders,
                 intake_per_s: ($orders / $elapsed | floor), relay_per_s: (($orders - $b0) / $elapsed | floor),
                 outbox_at_stop: $b0, outbox_after_1s: $b1, outbox_after_3s: $b3, rss_kb_before: $rss0 }),
          flood: ($flood + { connections: $fc, rss_kb_before: $rss1, rss_kb_peak: $peak, rss_kb_after: $rss2,
                   vm_hwm_kb: $hwm,
                   not_2xx_or_503: ([$flood.statuses | to_entries[] | select((.key | startswith("2") | not) and .key != "503") | .value] | add // 0) }) }')")
    if [[ -n "$db" ]]; then
        psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -qc "drop database if exists $db" >/dev/null 2>&1 || true
        db=""
    fi
    rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
    vhost=""
    rm -f "$work/restaurant.db"*
done

summary=$(printf '%s\n' "${results[@]}" | jq -s --arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --arg commit "${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" \
    --arg cpu "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo) x $(nproc)" \
    '{ date_utc: $date, commit: $commit, cpu: $cpu, backends: . }')
file="$out/pressure-$(date -u +%Y%m%d-%H%M%S).json"
printf '%s\n' "$summary" >"$file"
cp "$file" "$out/latest-pressure.json"
jq -r '
    "### \(.date_utc) · under pressure (bench/pressure.sh) · commit \(.commit)\n",
    "| backend | load avg before | wrk -c\(.backends[0].run.connections) \(.backends[0].run.elapsed_s | floor) s: requests, failed | p50 / p99 | intake / relay orders/s | outbox at stop / +1 s / +3 s | flood -c\(.backends[0].flood.connections): answers by status, socket errors | RSS before / peak / after |",
    "|---|---|---|---|---|---|---|---|",
    (.backends[] | "| \(.backend) | \(.load_average_before) | \(.run.requests), \(.run.failed) | \(.run.latency_ms.p50) / \(.run.latency_ms.p99) ms | \(.run.intake_per_s) / \(.run.relay_per_s) | \(.run.outbox_at_stop) / \(.run.outbox_after_1s) / \(.run.outbox_after_3s) | \(.flood.statuses | to_entries | map("\(.key): \(.value)") | join(", ")); \(.flood.errors | to_entries | map(select(.value > 0 and .key != "status") | "\(.key) \(.value)") | join(", ") | if . == "" then "none" else . end) | \(.flood.rss_kb_before / 1024 | floor) / \(.flood.rss_kb_peak / 1024 | floor) / \(.flood.rss_kb_after / 1024 | floor) MB |")
' "$file"
log "JSON written to $file"
