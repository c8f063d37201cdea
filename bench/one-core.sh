#!/usr/bin/env bash
# The one-core profile (issue 15): the whole stack on the box a restaurant buys.
#
#   bash bench/run.sh --one-core                 # this script, after the usual build
#   bash bench/one-core.sh [--short] [--stock] [--backends sqlite,postgres] [--doc FILE]
#
# Private PostgreSQL, RabbitMQ and Mosquitto instances and the daemon (--mode=all, SQLite or
# PostgreSQL) all run pinned to CPU 0 (taskset; every process they fork inherits it), inside one
# CPU-accounting cgroup when the machine lets us make one; the load generator
# (target/release/examples/bench) runs on CPU 1. Per backend it reports:
#   - start-up to READY of the stack: the servers started together until each accepts clients,
#     then the daemon until its /health answers (a box boots its servers before our units);
#   - the whole stack's idle CPU over --idle-seconds (60; % of the one core) and its memory:
#     RSS of each process, summed per server, and PSS (shared pages counted once) in all;
#   - under load (the benchmark program, daemon pinned to CPU 0): sustained orders/s with POST
#     p99 <= 10 ms, POST -> retained MQTT p50/p99 at 20/s (a dinner rush) and 100/s.
# --stock runs the servers with Debian's default settings; the default is the frugal settings
# shipped in packaging/small-box/ and packaging/mosquitto/ (docs/install.md, "A small box"). Figures go to stdout, to
# target/bench/one-core-PROFILE/one-core.json and, with --doc, recorded in that file (bench/record.sh).
# Needs root (the servers run as their own users) and at least 2 CPUs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RS_LOG_TAG="one-core"

short=0
profile=frugal
backends=sqlite,postgres
doc=""
idle_seconds=60
while [[ $# -gt 0 ]]; do
    case "$1" in
    --short) short=1 ;;
    --stock) profile=stock ;;
    --frugal) profile=frugal ;;
    --backends) backends=$2; shift ;;
    --doc) doc=$2; shift ;;
    --idle-seconds) idle_seconds=$2; shift ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown flag $1 (see --help)" ;;
    esac
    shift
done
[[ $short -eq 1 && $idle_seconds -eq 60 ]] && idle_seconds=10

[[ ${EUID} -eq 0 ]] || die "the one-core profile needs root (private servers run as the postgres and rabbitmq users)"
[[ $(nproc) -ge 2 ]] || die "the one-core profile needs 2 CPUs: the stack on one, the load generator on the other"
STACK_CPU=0
LOAD_CPU=1
need_apt rabbitmq-server mosquitto jq curl
command -v pgbench >/dev/null 2>&1 || need_apt postgresql-client
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt postgresql
PG_BIN=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
BIN=target/release/restaurant-system
BENCH=target/release/examples/bench
[[ -x $BIN && -x $BENCH ]] || die "build first: cargo build --release --bin restaurant-system --example bench (bench/run.sh does)"

out="target/bench/one-core-$profile"
mkdir -p "$out"
work=$(mktemp -d /tmp/rs-onecore.XXXXXX)
chmod 755 "$work"
daemon_pid=""
cg=""
pg_data=""
mq_node=""
mosq_pid=""

# ---- accounting: one cgroup for the whole stack ----------------------------------------------
# cgroup v1 cpuacct (this machine) or v2 cpu.stat; without either, /proc of the stack's processes.
cg_make() {
    local name="rs-onecore-$$"
    if [[ -d /sys/fs/cgroup/cpuacct && -w /sys/fs/cgroup/cpuacct ]] && mkdir "/sys/fs/cgroup/cpuacct/$name" 2>/dev/null; then
        cg="/sys/fs/cgroup/cpuacct/$name"
    elif [[ -f /sys/fs/cgroup/cgroup.controllers ]] && mkdir "/sys/fs/cgroup/$name" 2>/dev/null; then
        cg="/sys/fs/cgroup/$name"
    else
        log "no cgroup could be made: CPU is summed from /proc over the stack's processes"
    fi
}
# cg_usage_ns: CPU time of everything in the cgroup so far.
cg_usage_ns() {
    if [[ -f "$cg/cpuacct.usage" ]]; then
        cat "$cg/cpuacct.usage"
    elif [[ -f "$cg/cpu.stat" ]]; then
        awk '$1 == "usage_usec" { printf "%d\n", $2 * 1000 }' "$cg/cpu.stat"
    else
        local total=0 pid t
        for pid in $(stack_pids); do
            t=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
            total=$((total + t))
        done
        echo $((total * 1000000000 / $(getconf CLK_TCK)))
    fi
}
# stack_pids: every process of the stack (the cgroup's, else the processes pinned by us).
stack_pids() {
    if [[ -n "$cg" ]]; then
        cat "$cg/cgroup.procs"
    else
        pgrep -f "rs-onecore|$work" || true
    fi
}
# in_stack CMD...: CMD in the stack's cgroup, pinned to the stack's CPU.
in_stack() {
    bash -c '[[ -z "$1" ]] || echo $$ >"$1/cgroup.procs"; shift; exec taskset -c '"$STACK_CPU"' "$@"' _ "$cg" "$@"
}

cleanup() {
    set +e
    [[ -n "$daemon_pid" ]] && kill -TERM "$daemon_pid" 2>/dev/null && sleep 1
    [[ -n "$mosq_pid" ]] && kill -TERM "$mosq_pid" 2>/dev/null
    [[ -n "$mq_node" ]] && RABBITMQ_NODENAME=$mq_node timeout 60 rabbitmqctl -q stop >/dev/null 2>&1
    [[ -n "$pg_data" ]] && timeout 60 runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1
    if [[ -n "$cg" ]]; then
        for p in $(cat "$cg/cgroup.procs" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
        sleep 0.5
        rmdir "$cg" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
now_ms() { date +%s%3N; }

# ---- the servers -------------------------------------------------------------------------------
pg_port=$(free_port)
mq_port=$(free_port)
mq_dist=$(free_port)
mqtt_port=$(free_port)

start_postgres() { # (pg_data is set by the caller: this runs in the background)
    local d
    d=$(dirname "$pg_data") # owned by postgres: the data, its log and its socket
    install -d -o postgres -g postgres "$d"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$pg_data" -A trust -U postgres -E UTF8 --no-sync >"$work/initdb.out" 2>&1 ||
        die "initdb failed: $(tail -n 5 "$work/initdb.out")"
    # The frugal profile is exactly what docs/install.md ships for a small box.
    if [[ $profile == frugal ]]; then
        printf "include '%s'\n" "$PWD/packaging/small-box/postgresql.conf" >>"$pg_data/postgresql.conf"
    fi
    in_stack runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pg_data" -l "$d/pg.log" \
        -o "-p $pg_port -k $d -c listen_addresses=127.0.0.1" -w -t 120 start >"$work/pg_ctl.out" 2>&1 ||
        die "private PostgreSQL did not start: $(tail -n 5 "$d/pg.log" "$work/pg_ctl.out" 2>&1)"
}

start_rabbitmq() {
    local d="$work/mq"
    install -d -o rabbitmq -g rabbitmq "$d"
    mq_node="rs_onecore_$$@localhost"
    printf 'listeners.tcp.1 = 127.0.0.1:%s\n' "$mq_port" >"$d/rabbitmq.conf"
    printf 'ERL_EPMD_ADDRESS=127.0.0.1\n' >"$d/rabbitmq-env.conf"
    printf '[].\n' >"$d/enabled_plugins"
    local SERVER_ADDITIONAL_ERL_ARGS=""
    if [[ $profile == frugal ]]; then
        # shellcheck source=packaging/small-box/rabbitmq-env.conf
        source packaging/small-box/rabbitmq-env.conf
        cat packaging/small-box/rabbitmq.conf >>"$d/rabbitmq.conf"
    fi
    chown -R rabbitmq:rabbitmq "$d"
    (
        cd "$d"
        RABBITMQ_NODENAME=$mq_node RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$mq_port \
            RABBITMQ_DIST_PORT=$mq_dist RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
            RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins" \
            RABBITMQ_MNESIA_BASE="$d/mnesia" RABBITMQ_LOG_BASE="$d/log" RABBITMQ_PID_FILE="$d/rabbitmq.pid" \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$SERVER_ADDITIONAL_ERL_ARGS" ERL_EPMD_ADDRESS=127.0.0.1 \
            in_stack /usr/sbin/rabbitmq-server >"$d/server.out" 2>&1 &
    )
    local i
    for ((i = 0; i < 1200; i++)); do
        port_open 127.0.0.1 "$mq_port" && break
        sleep 0.1
    done
    port_open 127.0.0.1 "$mq_port" || die "private RabbitMQ did not open port $mq_port: $(tail -n 20 "$d/server.out")"
    RABBITMQ_NODENAME=$mq_node timeout 90 rabbitmqctl -q await_startup --timeout 60 >/dev/null ||
        die "private RabbitMQ did not finish starting: $(tail -n 20 "$d/server.out")"
}

start_mosquitto() {
    local d="$work/mosq"
    mkdir -p "$d"
    {
        printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$mqtt_port"
        # The limits of packaging/mosquitto/restaurant.conf (what a box runs).
        if [[ $profile == frugal ]]; then
            grep -E '^max_queued_messages ' packaging/mosquitto/restaurant.conf
        fi
    } >"$d/mosquitto.conf"
    chmod -R a+rX "$d"
    in_stack mosquitto -c "$d/mosquitto.conf" >"$d/mosquitto.log" 2>&1 &
    mosq_pid=$!
    local i
    for ((i = 0; i < 300; i++)); do
        port_open 127.0.0.1 "$mqtt_port" && return 0
        sleep 0.02
    done
    die "private Mosquitto did not open port $mqtt_port: $(tail -n 5 "$d/mosquitto.log")"
}

# ---- measurements --------------------------------------------------------------------------------
# memory_json: {"processes": [{pid, name, rss_kb, pss_kb}], per server sums, totals} of the stack.
memory_json() {
    local pid comm rss pss
    for pid in $(stack_pids); do
        [[ -r /proc/$pid/status ]] || continue
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || echo '?')
        rss=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status" 2>/dev/null)
        pss=$(awk '$1 == "Pss:" { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null)
        [[ -n "$rss" ]] || continue
        printf '{"pid":%s,"name":"%s","rss_kb":%s,"pss_kb":%s}\n' "$pid" "$comm" "$rss" "${pss:-0}"
    done | jq -s '
        def server: if .name == "postgres" then "postgresql"
            elif (.name | test("^(beam|epmd|erl_|inet_gethost|rabbitmq)")) then "rabbitmq"
            elif .name == "mosquitto" then "mosquitto"
            elif (.name | startswith("restaurant")) then "restaurant-system"
            else "other" end;
        { processes: [ .[] | . + {server: server} ] }
        | . + { by_server: (.processes | group_by(.server) | map({ key: .[0].server,
                  value: { processes: length, rss_kb: (map(.rss_kb) | add), pss_kb: (map(.pss_kb) | add) } }) | from_entries),
                rss_kb: (.processes | map(.rss_kb) | add), pss_kb: (.processes | map(.pss_kb) | add) }'
}

wait_health() { # PORT LIMIT_S: until /health answers 200
    local i
    for ((i = 0; i < $2 * 100; i++)); do
        curl -fsS -o /dev/null "http://127.0.0.1:$1/health" 2>/dev/null && return 0
        kill -0 "$daemon_pid" 2>/dev/null || return 1
        sleep 0.01
    done
    return 1
}

results=()
IFS=, read -r -a backend_list <<<"$backends"
cg_make
for backend in "${backend_list[@]}"; do
    case "$backend" in sqlite | postgres) ;; *) die "unknown backend $backend" ;; esac
    log "$backend ($profile servers): starting the stack on CPU $STACK_CPU"
    t0=$(now_ms)
    pg_ms=null
    if [[ $backend == postgres ]]; then
        pg_data="$work/pg/data"
        start_postgres &
        pg_job=$!
    fi
    start_mosquitto
    mosq_ms=$(($(now_ms) - t0))
    start_rabbitmq
    mq_ms=$(($(now_ms) - t0))
    if [[ $backend == postgres ]]; then
        wait "$pg_job" || die "private PostgreSQL did not start"
        pg_ms=$(($(now_ms) - t0))
    fi
    servers_ms=$(($(now_ms) - t0))

    # The daemon, as a box runs it: --mode=all, cooking time 0, the bridge on, a fresh database.
    order_port=$(free_port)
    denv=(RESTAURANT_DATABASE__BACKEND="$backend" RABBITMQ_HOST=127.0.0.1 RABBITMQ_PORT="$mq_port"
        RABBITMQ_USER=guest RABBITMQ_PASSWORD=guest RESTAURANT_MQTT__ENABLED=true
        RESTAURANT_MQTT__HOST=127.0.0.1 RESTAURANT_MQTT__PORT="$mqtt_port" RESTAURANT_HTTP__BIND=127.0.0.1
        RESTAURANT_HTTP__ORDER_PORT="$order_port" RESTAURANT_HTTP__TRACKING_PORT="$(free_port)"
        RESTAURANT_HTTP__BRIDGE_PORT="$(free_port)" RESTAURANT_LOG__FORMAT=json
        RESTAURANT_DATABASE__SQLITE_PATH="$work/restaurant.db" RESTAURANT_DATABASE__POOL_SIZE=4)
    [[ $backend == postgres ]] && denv+=(DB_HOST=127.0.0.1 DB_PORT="$pg_port" DB_USER=postgres DB_NAME=postgres)
    printf '[log]\nlevel = "info"\n' >"$work/daemon.toml"
    t1=$(now_ms)
    env "${denv[@]}" bash -c '[[ -z "$1" ]] || echo $$ >"$1/cgroup.procs"; shift; exec taskset -c '"$STACK_CPU"' "$@"' _ "$cg" \
        "$BIN" --config "$work/daemon.toml" --mode=all --worker-name=onecore_chef >"$work/daemon.log" 2>&1 &
    daemon_pid=$!
    wait_health "$order_port" 60 || die "the daemon did not become healthy: $(tail -n 20 "$work/daemon.log")"
    daemon_ms=$(($(now_ms) - t1))
    stack_ms=$(($(now_ms) - t0))
    log "$backend: servers up in $servers_ms ms, daemon healthy $daemon_ms ms later (stack $stack_ms ms)"

    sleep 5 # let start-up work (migrations, first heartbeats) settle before the idle window
    log "$backend: idle for $idle_seconds s"
    u0=$(cg_usage_ns)
    sleep "$idle_seconds"
    u1=$(cg_usage_ns)
    idle_pct=$(awk -v d=$((u1 - u0)) -v s="$idle_seconds" 'BEGIN { printf "%.2f", d / (s * 1e9) * 100 }')
    mem=$(memory_json)
    log "$backend: idle CPU $idle_pct% of the core; memory $(jq -r '"RSS \(.rss_kb / 1024 | floor) MB, PSS \(.pss_kb / 1024 | floor) MB"' <<<"$mem")"
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=""

    # Under load: the benchmark program on the other CPU, every daemon it starts on ours.
    # (The benchmark's daemons are pinned by taskset and measured by it from /proc.)
    bench_args=(--bin "$BIN" --out "$out" --backends "$backend" --daemon-cpus "$STACK_CPU"
        --pgbench-script bench/order_tx.sql)
    if [[ $short -eq 1 ]]; then
        bench_args+=(--short --rates 20,100,250,500 --burst 100)
    else
        bench_args+=(--rates 20,100,250,500,750,1000,1250,1500,2000)
    fi
    log "$BENCH ${bench_args[*]}"
    TEST_PG_HOST=127.0.0.1 TEST_PG_PORT=$pg_port TEST_PG_USER=postgres TEST_RABBITMQ_HOST=127.0.0.1 \
        TEST_RABBITMQ_PORT=$mq_port TEST_MQTT_HOST=127.0.0.1 TEST_MQTT_PORT=$mqtt_port \
        RABBITMQ_NODENAME=$mq_node BENCH_NOTE="one-core profile ($profile servers)" \
        taskset -c "$LOAD_CPU" "$BENCH" "${bench_args[@]}" >"$out/bench-$backend.out" 2>&1 ||
        { tail -n 30 "$out/bench-$backend.out" >&2; die "the benchmark failed on $backend"; }
    kind=$([[ $short -eq 1 ]] && echo short || echo full)
    report="$out/latest-$kind-all.json"
    cp "$report" "$out/bench-$backend.json"
    results+=("$(jq --arg backend "$backend" --arg profile "$profile" \
        --argjson servers_ms "$servers_ms" --argjson daemon_ms "$daemon_ms" --argjson stack_ms "$stack_ms" \
        --argjson pg_ms "$pg_ms" --argjson mq_ms "$mq_ms" --argjson mosq_ms "$mosq_ms" \
        --argjson idle_pct "$idle_pct" --argjson idle_s "$idle_seconds" --argjson memory "$mem" '
        .backends[0] as $b
        | def at(r): ($b.steps | map(select(.rate == r)) | first);
        { backend: $backend, profile: $profile,
          startup_ms: { stack: $stack_ms, servers: $servers_ms, daemon_after_servers: $daemon_ms,
                        postgresql: $pg_ms, rabbitmq: $mq_ms, mosquitto: $mosq_ms },
          idle: { seconds: $idle_s, cpu_pct_of_core: $idle_pct },
          memory: $memory,
          sustained_orders_per_s: $b.sustained_rate,
          post_p99_ms_at: ($b.steps | map({ key: (.rate | tostring), value: .post_latency.p99_ms }) | from_entries),
          mqtt_at_20: (at(20).e2e_mqtt // null | if . then { p50_ms, p99_ms } else null end),
          mqtt_at_100: (at(100).e2e_mqtt // null | if . then { p50_ms, p99_ms } else null end),
          daemon_peak_rss_kb: $b.peak_rss_kb }' "$report")")

    # Down with the servers before the next backend's stack starts from scratch.
    kill -TERM "$mosq_pid" 2>/dev/null || true
    mosq_pid=""
    RABBITMQ_NODENAME=$mq_node timeout 60 rabbitmqctl -q stop >/dev/null 2>&1 || true
    mq_node=""
    if [[ -n "$pg_data" ]]; then
        timeout 60 runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$work/pg"
        pg_data=""
    fi
    rm -rf "$work/mq" "$work/mosq" "$work/restaurant.db"*
    sleep 2
done

summary=$(printf '%s\n' "${results[@]}" | jq -s --arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --arg commit "${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" \
    --arg cpu "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
    '{ date_utc: $date, commit: $commit, cpu: $cpu, runs: . }')
printf '%s\n' "$summary" >"$out/one-core.json"

md=$(jq -r '
    def f(x): if x == null then "n/a" else (x * 100 | round / 100 | tostring) end;
    def mb(x): if x == null then "n/a" else ((x / 1024 * 10 | round) / 10 | tostring) + " MB" end;
    "### \(.date_utc) · one-core profile (\(.runs[0].profile) servers) · commit \(.commit)\n",
    "Stack (servers and `--mode=all`) pinned to CPU 0 of \(.cpu); load generator on CPU 1.\n",
    "| backend | sustained orders/s (POST p99 <= 10 ms) | POST -> MQTT p50 / p99 at 20/s | at 100/s | idle CPU (% of the core) | memory: RSS sum / PSS sum | start-up to READY (servers + daemon) |",
    "|---|---|---|---|---|---|---|",
    (.runs[] | "| \(.backend) | \(.sustained_orders_per_s // "n/a") | \(f(.mqtt_at_20.p50_ms)) / \(f(.mqtt_at_20.p99_ms)) ms | \(f(.mqtt_at_100.p50_ms)) / \(f(.mqtt_at_100.p99_ms)) ms | \(.idle.cpu_pct_of_core)% over \(.idle.seconds) s | \(mb(.memory.rss_kb)) / \(mb(.memory.pss_kb)) | \(.startup_ms.stack) ms (\(.startup_ms.servers) + \(.startup_ms.daemon_after_servers)) |"),
    "",
    (.runs[] | "- \(.backend), memory per server (RSS sum / PSS sum, processes): " +
        ([.memory.by_server | to_entries[] | "\(.key) \(mb(.value.rss_kb)) / \(mb(.value.pss_kb)) (\(.value.processes))"] | join("; "))),
    ""' <<<"$summary")
printf '\n%s\n' "$md"
if [[ -n "$doc" ]]; then
    printf '%s\n' "$md" >"$out/one-core-summary.md"
    bash bench/record.sh "$out/one-core-summary.md" "$doc"
fi
log "JSON written to $out/one-core.json"
