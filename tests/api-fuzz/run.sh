#!/usr/bin/env bash
# API fuzzing (issue 6, fault suite item 5): schemathesis against docs/openapi.yaml and the real
# order and tracking services. No 5xx, and every answer matches the document (status code,
# content type, body schema).
#
#   tests/api-fuzz/run.sh
#
# It starts the system itself: the real binary (RS_BIN, else the newer of target/release and
# target/debug, built with `cargo build` when missing or older than the sources) with --mode=all
# on SQLite in a temporary directory, a fresh RabbitMQ vhost, MQTT off, free ports, 0.1 s cooking.
# It places a few orders and takes them through every status so that schemathesis' examples
# phase also meets existing orders, then runs schemathesis once per service (examples, coverage,
# fuzzing, and stateful for the order service through the document's links), and checks that
# both services serve docs/openapi.yaml byte for byte. Everything is removed on exit.
#
# Knobs: API_FUZZ_MAX_EXAMPLES (40, per operation and phase), API_FUZZ_SEED (random),
#        API_FUZZ_VENV (target/api-fuzz-venv), API_FUZZ_KEEP=1 (keep the temp dir and reports),
#        RS_BIN (binary), TEST_RABBITMQ_HOST/PORT (127.0.0.1:5672; user guest).
# Last line: "N passed, N failed" (test cases, plus the document and seeding checks).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=../../scripts/lib.sh
source "$root/scripts/lib.sh"
export RS_LOG_TAG="api-fuzz"

max_examples="${API_FUZZ_MAX_EXAMPLES:-40}"
venv="${API_FUZZ_VENV:-$root/target/api-fuzz-venv}"
mq_host="${TEST_RABBITMQ_HOST:-127.0.0.1}"
mq_port="${TEST_RABBITMQ_PORT:-5672}"
start_time=$(date +%s)

# ---------------------------------------------------------------------------------------------
# Tools: Python venv with the pinned schemathesis, RabbitMQ, the binary.

need_apt python3 python3-venv
if [[ "$mq_host" == 127.0.0.1 || "$mq_host" == localhost ]]; then
    ensure_rabbitmq
fi
command -v rabbitmqctl >/dev/null 2>&1 || die "rabbitmqctl not found (apt-get install rabbitmq-server)"

requirements="$here/requirements.txt"
want_hash=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c '' 2>/dev/null; then
    log "creating Python venv $venv"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv" || die "python3 -m venv $venv failed (is python3-venv installed?)"
fi
if [[ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want_hash" ]]; then
    log "pip install -r tests/api-fuzz/requirements.txt (into $venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" </dev/null ||
        die "pip install -r $requirements failed"
    echo "$want_hash" >"$venv/.requirements.sha256"
fi
py="$venv/bin/python"
st="$venv/bin/schemathesis"
log "$("$st" --version)"

# The binary: RS_BIN, else the newest build, rebuilt when a source is newer (it embeds the document).
if [[ -n "${RS_BIN:-}" ]]; then
    bin="$RS_BIN"
    [[ -x "$bin" ]] || die "RS_BIN=$bin is not an executable"
else
    bin=""
    for candidate in "$root/target/release/restaurant-system" "$root/target/debug/restaurant-system"; do
        if [[ -x "$candidate" && (-z "$bin" || "$candidate" -nt "$bin") ]]; then
            bin="$candidate"
        fi
    done
    if [[ -z "$bin" ]] || [[ -n "$(find "$root/src" "$root/docs/openapi.yaml" "$root/web/dist" "$root/Cargo.toml" \
        "$root/Cargo.lock" -newer "$bin" -print -quit 2>/dev/null)" ]]; then
        log "building the binary (cargo build): ${bin:-none yet} is missing or older than the sources"
        ensure_cargo
        (cd "$root" && cargo build --bin restaurant-system) || die "cargo build failed"
        bin="$root/target/debug/restaurant-system"
    fi
fi
log "binary: $bin"

# ---------------------------------------------------------------------------------------------
# The system under test, in its own world.

tmp=$(mktemp -d /tmp/rs-api-fuzz.XXXXXX)
vhost="rs_api_fuzz_$$_$RANDOM"
pid=""
cleanup() {
    local rc=$?
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
    if [[ -n "${API_FUZZ_KEEP:-}" ]]; then
        log "kept $tmp (service.log, reports/)"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rabbitmqctl -q add_vhost "$vhost" >/dev/null || die "rabbitmqctl add_vhost $vhost failed"
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null ||
    die "rabbitmqctl set_permissions on $vhost failed"

read -r order_port tracking_port bridge_port < <("$py" -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
')
order_url="http://127.0.0.1:$order_port"
tracking_url="http://127.0.0.1:$tracking_port"

# rs ARGS...: execs the binary with this run's settings (the services, and the token CLI). Call
# it in a subshell only: it replaces the shell it runs in (so $! is the service's own pid).
: >"$tmp/empty.toml"
rs() {
    exec env -u DB_HOST -u DB_PORT -u DB_USER -u DB_PASSWORD -u DB_NAME \
        -u RABBITMQ_HOST -u RABBITMQ_PORT -u RABBITMQ_USER -u RABBITMQ_PASSWORD \
        RESTAURANT_DATABASE__BACKEND=sqlite \
        RESTAURANT_DATABASE__SQLITE_PATH="$tmp/restaurant.db" \
        RESTAURANT_RABBITMQ__HOST="$mq_host" \
        RESTAURANT_RABBITMQ__PORT="$mq_port" \
        RESTAURANT_RABBITMQ__USER=guest \
        RESTAURANT_RABBITMQ__PASSWORD=guest \
        RESTAURANT_RABBITMQ__VHOST="$vhost" \
        RESTAURANT_MQTT__ENABLED=false \
        RESTAURANT_HTTP__BIND=127.0.0.1 \
        RESTAURANT_HTTP__ORDER_PORT="$order_port" \
        RESTAURANT_HTTP__TRACKING_PORT="$tracking_port" \
        RESTAURANT_HTTP__BRIDGE_PORT="$bridge_port" \
        RESTAURANT_KITCHEN__COOKING_SECONDS__DINE_IN=0.1 \
        RESTAURANT_KITCHEN__COOKING_SECONDS__TAKEOUT=0.1 \
        RESTAURANT_KITCHEN__COOKING_SECONDS__DELIVERY=0.1 \
        RESTAURANT_LOG__LEVEL=info \
        "$bin" --config "$tmp/empty.toml" "$@"
}
log "starting $bin --mode=all (order $order_port, tracking $tracking_port, vhost $vhost, SQLite in $tmp)"
(
    cd "$tmp"
    rs --mode=all
) >"$tmp/service.log" 2>&1 </dev/null &
pid=$!

if ! "$py" "$here/helper.py" wait "$order_url" "$tracking_url" 60; then
    tail -n 30 "$tmp/service.log" >&2 || true
    die "the system did not come up (log above)"
fi
log "system is up"

# Issue 11: the fuzzing runs with a manager token (every route allowed), as a client on the LAN
# would. The token is not printed.
token=$(cd "$tmp" && rs token create api-fuzz --role manager </dev/null | tail -n 1) ||
    die "restaurant-system token create failed"
[[ "$token" == rsk_* ]] || die "token create did not print a token as its last line"

# ---------------------------------------------------------------------------------------------
# Checks.

extra_failed=0
extra_passed=0
summary_lines=()

for url in "$order_url" "$tracking_url"; do
    if "$py" "$here/helper.py" served "$url" "$root/docs/openapi.yaml"; then
        extra_passed=$((extra_passed + 1))
    else
        extra_failed=$((extra_failed + 1))
    fi
done

# Real orders in every status, listed as examples of the order_number parameter.
schema="$tmp/openapi.yaml"
if "$py" "$here/helper.py" seed "$order_url" "$tracking_url" "$root/docs/openapi.yaml" "$schema"; then
    extra_passed=$((extra_passed + 1))
else
    extra_failed=$((extra_failed + 1))
    cp "$root/docs/openapi.yaml" "$schema"
fi

seed_args=()
if [[ -n "${API_FUZZ_SEED:-}" ]]; then
    seed_args=(--seed "$API_FUZZ_SEED")
fi

# run_schemathesis NAME TAG BASE_URL PHASES
run_schemathesis() {
    local name=$1 tag=$2 url=$3 phases=$4 rc out
    out="$tmp/reports/$name"
    mkdir -p "$out"
    printf '\n==== schemathesis: %s (%s, %s examples per operation) ====\n' "$name" "$url" "$max_examples"
    set +e
    (cd "$tmp" && timeout -k 10 900 "$st" run "$schema" \
        --url "$url" \
        --include-tag "$tag" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --phases "$phases" \
        --max-examples "$max_examples" \
        --workers 1 \
        --request-timeout 15 \
        --header "Authorization: Bearer $token" \
        --no-color \
        --report ndjson,junit --report-dir "$out" \
        "${seed_args[@]}" </dev/null) 2>&1 | tee "$out/output.txt"
    rc=${PIPESTATUS[0]}
    set -e
    local line cases passed failed errors5
    line=$("$py" "$here/helper.py" summary "$name" "$out"/ndjson-*.ndjson | tee "$out/summary.txt" | tail -n 1) ||
        line="0 0 0 0"
    read -r cases passed failed errors5 <<<"$line"
    sed '$d' "$out/summary.txt"
    if [[ $rc -ne 0 && $failed -eq 0 ]]; then
        # Schemathesis failed without a failing case (a schema it cannot load, a network error...).
        log "schemathesis ($name) exited $rc with no failing test case: see the output above"
        failed=1
    fi
    total_cases=$((total_cases + cases))
    total_passed=$((total_passed + passed))
    total_failed=$((total_failed + failed))
    total_5xx=$((total_5xx + errors5))
    summary_lines+=("$(printf '%-18s %6s cases %6s passed %4s failed %4s 5xx  (exit %s)' "$name" "$cases" "$passed" "$failed" "$errors5" "$rc")")
}

total_cases=0
total_passed=0
total_failed=0
total_5xx=0
run_schemathesis order-service order-service "$order_url" examples,coverage,fuzzing,stateful
run_schemathesis tracking-service tracking-service "$tracking_url" examples,coverage,fuzzing

if [[ $total_cases -lt 300 ]]; then
    log "only $total_cases test cases ran (at least 300 expected): raise API_FUZZ_MAX_EXAMPLES"
    extra_failed=$((extra_failed + 1))
fi
if grep -qF -e "$token" -e 'Bearer ' "$tmp/service.log"; then
    log "a token or an Authorization header is in the service log"
    extra_failed=$((extra_failed + 1))
fi
if grep -q 'panicked' "$tmp/service.log"; then
    log "the service panicked:"
    grep -m 5 'panicked' "$tmp/service.log" >&2
    extra_failed=$((extra_failed + 1))
fi
if ! kill -0 "$pid" 2>/dev/null; then
    log "the service exited during the run:"
    tail -n 30 "$tmp/service.log" >&2 || true
    extra_failed=$((extra_failed + 1))
fi

secs=$(($(date +%s) - start_time))
printf '\n==================== api-fuzz summary ====================\n'
for l in "${summary_lines[@]}"; do
    echo "$l"
done
printf 'other checks (document served byte for byte, seeding, case count, no panic): %s failed\n' "$extra_failed"
printf 'api-fuzz: %s test cases against the running services, %s 5xx, %ss\n' "$total_cases" "$total_5xx" "$secs"
echo "$((total_passed + extra_passed)) passed, $((total_failed + extra_failed)) failed"
[[ $((total_failed + extra_failed)) -eq 0 ]]
