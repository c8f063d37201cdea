#!/usr/bin/env bash
# POST /orders over HTTPS beside plain HTTP (issue 27), with wrk:
#
#   bash bench/tls.sh             # 10 s per run; prints a table, records it in docs/BENCHMARKS.md (bench/record.sh)
#   BENCH_SECONDS=3 BENCH_DOC= bash bench/tls.sh    # shorter, and written nowhere
#
# One order service (release build, SQLite in a temp dir, the local RabbitMQ on a vhost of its
# own, removed afterwards) with `[tls] mode = "self-signed"`; the same port serves both. Four
# runs of wrk -t2 -c16: plain HTTP and HTTPS, each with kept-alive connections and with a new
# connection per request (`Connection: close`, so every HTTPS request pays a full handshake).
# Prints requests/s, p50 and p99 latency and non-2xx answers. Asserts nothing about speed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RS_LOG_TAG="bench-tls"

secs=${BENCH_SECONDS:-10}
doc=${BENCH_DOC-docs/BENCHMARKS.md}
command -v wrk >/dev/null || need_apt wrk
bin=${RS_BIN:-target/release/restaurant-system}
if [[ -z "${RS_BIN:-}" ]]; then
    log "cargo build --release"
    cargo build --release --quiet
fi

tmp=$(mktemp -d)
pid=""

vhost="rs_bench_tls_$$"
cleanup() {
    [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT

: >"$tmp/empty.toml"
ensure_rabbitmq
rabbitmqctl -q add_vhost "$vhost" >/dev/null
rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*' >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RESTAURANT_DATABASE__BACKEND=sqlite RESTAURANT_DATABASE__SQLITE_PATH="$tmp/r.db" \
    RESTAURANT_HTTP__BIND=127.0.0.1 RESTAURANT_HTTP__ORDER_PORT="$port" \
    RESTAURANT_TLS__MODE=self-signed RESTAURANT_TLS__DIR="$tmp/tls" \
    RESTAURANT_RABBITMQ__HOST=127.0.0.1 RESTAURANT_RABBITMQ__VHOST="$vhost" RESTAURANT_LOG__LEVEL=error RESTAURANT_LOG__FORMAT=json \
    "$bin" --config "$tmp/empty.toml" --mode=order-service >"$tmp/service.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break
    sleep 0.2
done
curl -sf -o /dev/null --cacert "$tmp/tls/ca.crt" "https://localhost:$port/health" ||
    die "the order service did not come up over HTTPS (log: $(tail -n 5 "$tmp/service.log"))"

cat >"$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"customer_name":"Bench","order_type":"takeout","items":[{"name":"Burger","quantity":1,"price":12.5}]}'
local non2xx = 0
response = function(status, headers, body)
  if status < 200 or status > 299 then non2xx = non2xx + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.2f %.2f %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

run() { # LABEL URL [wrk args]
    local label=$1 url=$2
    shift 2
    local out
    out=$(wrk -t2 -c16 -d"${secs}s" --timeout 5s -s "$tmp/post.lua" "$@" "$url/orders" 2>&1)
    read -r rps p50 p99 errs <<<"$(grep '^RESULT' <<<"$out" | cut -d' ' -f2-)"
    printf '| %-32s | %8s | %8s | %8s | %6s |\n' "$label" "$rps" "$p50" "$p99" "$errs"
}

table=$(
    printf '| %-32s | %8s | %8s | %8s | %6s |\n' "POST /orders, wrk -t2 -c16, ${secs} s" "req/s" "p50 ms" "p99 ms" "errors"
    printf '|%s|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..34})" "----------" "----------" "----------" "--------"
    run "plain HTTP, kept alive" "http://127.0.0.1:$port"
    run "HTTPS, kept alive" "https://localhost:$port"
    run "plain HTTP, new connection each" "http://127.0.0.1:$port" -H "Connection: close"
    run "HTTPS, new connection each" "https://localhost:$port" -H "Connection: close"
)
load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "$table"
echo "load average during the run: $load ($(nproc) cores)"
if [[ -n "$doc" ]]; then
    mkdir -p target/bench
    {
        printf '### %s · HTTPS beside plain HTTP (bench/tls.sh) · commit %s\n\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(git rev-parse --short HEAD)"
        echo "$table"
        printf '\nOne order service on SQLite, TLS 1.3 (rustls, ECDSA P-256), load average %s on %s cores.\n' "$load" "$(nproc)"
    } >target/bench/tls-summary.md
    bash bench/record.sh target/bench/tls-summary.md "$doc"
fi
