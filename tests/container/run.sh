#!/usr/bin/env bash
# The container image test (issue 14): builds the top-level Containerfile with podman and runs the
# order service, a kitchen worker and the tracking service from it against this machine's RabbitMQ
# (a vhost of its own) and each database backend (SQLite on a volume shared by the containers, a
# PostgreSQL database of its own); an order goes through to ready; the health check and the
# non-root user are checked; everything it made is removed at the end.
#
#   bash tests/container/run.sh
#
# scripts/test.sh runs it as its "container" stage. Needs root. On this kind of machine podman
# runs containers only with the runc runtime and explicit ulimits, and no image registry is
# reachable, so the base image the Containerfile names (debian:bookworm-slim) is made here: a
# debootstrap root (bookworm, minbase), cached under $RS_CONTAINER_CACHE
# (/var/cache/restaurant-system-test) and imported with `podman import`. A fresh machine builds it
# once (about 2 minutes); afterwards the import takes seconds. The last line is "N passed, N failed".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RS_LOG_TAG="container"

[[ ${EUID} -eq 0 ]] || die "the container test needs root (podman with the runc runtime)"

BASE_IMAGE=docker.io/library/debian:bookworm-slim
CACHE=${RS_CONTAINER_CACHE:-/var/cache/restaurant-system-test}
BASE_TAR=$CACHE/debian-bookworm-minbase.tar
RUN_ID=$$
IMAGE=localhost/restaurant-system:test-$RUN_ID
# runc: Debian's crun refuses this machine's cgroup layout; the ulimits: the processes here lack
# CAP_SYS_RESOURCE, so podman's defaults (raising nofile) fail.
PODMAN=(podman --runtime runc)
LIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=4096:4096)
PASSED=0
FAILED=0
CONTAINERS=()
VHOST=""
PGDB=""
DATADIR=""

ok() {
    PASSED=$((PASSED + 1))
    log "PASS: $*"
}
bad() {
    FAILED=$((FAILED + 1))
    log "FAIL: $*"
}
check() {
    local what=$1
    shift
    if "$@"; then ok "$what"; else bad "$what"; fi
}

cleanup() {
    local c
    for c in "${CONTAINERS[@]}"; do
        "${PODMAN[@]}" rm -f -t 5 "$c" >/dev/null 2>&1 || true
    done
    CONTAINERS=()
    if [[ -n "$VHOST" ]]; then
        rabbitmqctl -q delete_vhost "$VHOST" >/dev/null 2>&1 || true
        VHOST=""
    fi
    if [[ -n "$PGDB" ]]; then
        psql -X -q -h 127.0.0.1 -p "${TEST_PG_PORT:-5432}" -U postgres -d postgres \
            -c "drop database if exists $PGDB with (force)" >/dev/null 2>&1 || true
        PGDB=""
    fi
    if [[ -n "$DATADIR" ]]; then
        rm -rf "$DATADIR"
        DATADIR=""
    fi
}
final_cleanup() {
    cleanup
    "${PODMAN[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
}
trap final_cleanup EXIT

# ---------------------------------------------------------------------------------------------
# Tools, servers, base image, binary

need_apt podman runc debootstrap curl jq ca-certificates
ensure_rabbitmq
ensure_postgres

ensure_base_image() {
    if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
        return 0
    fi
    if [[ ! -s "$BASE_TAR" ]]; then
        local root=$CACHE/rootfs.$RUN_ID
        mkdir -p "$CACHE"
        log "making the base image root with debootstrap (bookworm, minbase; once per machine)"
        rm -rf "$root"
        debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian \
            >"$CACHE/debootstrap.log" 2>&1 ||
            die "debootstrap failed; see $CACHE/debootstrap.log"
        # A slim image: no package lists, caches or docs.
        rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
            "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* "$root"/usr/share/man/*
        tar --numeric-owner -C "$root" -cf "$BASE_TAR.tmp" .
        mv "$BASE_TAR.tmp" "$BASE_TAR"
        rm -rf "$root"
    fi
    log "importing $BASE_TAR as $BASE_IMAGE"
    "${PODMAN[@]}" import "$BASE_TAR" "$BASE_IMAGE" >/dev/null
}
ensure_base_image

ensure_cargo
log "cargo build --release (the image copies target/release/restaurant-system)"
cargo build --release --bin restaurant-system </dev/null

# ---------------------------------------------------------------------------------------------
# Build

log "building $IMAGE from Containerfile"
if "${PODMAN[@]}" build --format docker --pull=never -q -t "$IMAGE" -f Containerfile . >/dev/null; then
    ok "image builds from Containerfile"
else
    bad "image builds from Containerfile"
    echo "$PASSED passed, $FAILED failed"
    exit 1
fi
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
log "image size: $((size / 1024 / 1024)) MiB"
check "image is small (< 200 MiB: $((size / 1024 / 1024)) MiB)" test "$size" -lt $((200 * 1024 * 1024))
user=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")
check "image runs as a non-root user ($user)" test -n "$user" -a "${user%%:*}" != root -a "${user%%:*}" != 0
uid=$("${PODMAN[@]}" run --rm "${LIMITS[@]}" --network none --entrypoint id "$IMAGE" -u)
check "the process uid in the container is not 0 ($uid)" test "$uid" != 0
check "a mode is required by flags: --help lists every mode" \
    bash -c "'${PODMAN[0]}' '${PODMAN[1]}' '${PODMAN[2]}' run --rm ${LIMITS[*]} --network none '$IMAGE' --help |
        grep -q 'order-service' "
check "validate runs with the image's default config" \
    "${PODMAN[@]}" run --rm "${LIMITS[@]}" --network none "$IMAGE" validate
check "the health check fails when nothing answers /health" \
    bash -c "! '${PODMAN[0]}' '${PODMAN[1]}' '${PODMAN[2]}' run --rm ${LIMITS[*]} --network none -e HEALTH_PORT=9 \
        --entrypoint /usr/local/bin/restaurant-healthcheck '$IMAGE' 2>/dev/null"

# ---------------------------------------------------------------------------------------------
# Run the services from the image, per backend

free_port() {
    local p
    for ((p = 20000 + RANDOM % 20000; ; p++)); do
        port_open 127.0.0.1 "$p" || {
            echo "$p"
            return
        }
    done
}

# run_container NAME HEALTH_PORT ARGS...: a detached container on the host network.
run_container() {
    local name=$1 hport=$2
    shift 2
    CONTAINERS+=("$name")
    "${PODMAN[@]}" run -d --name "$name" --network host "${LIMITS[@]}" \
        "${ENVS[@]}" -e "HEALTH_PORT=$hport" "${MOUNTS[@]}" "$IMAGE" "$@" >/dev/null
}

# wait_healthy NAME: `podman healthcheck run` (the image's HEALTHCHECK) passes within 60 s.
wait_healthy() {
    local name=$1 i
    for ((i = 0; i < 120; i++)); do
        if "${PODMAN[@]}" healthcheck run "$name" >/dev/null 2>&1; then
            return 0
        fi
        if [[ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$name" 2>/dev/null)" != true ]]; then
            log "$name is not running; its log:"
            "${PODMAN[@]}" logs --tail 30 "$name" >&2 || true
            return 1
        fi
        sleep 0.5
    done
    log "$name never became healthy; its log:"
    "${PODMAN[@]}" logs --tail 30 "$name" >&2 || true
    return 1
}

run_backend() {
    local backend=$1 oport tport number status i
    VHOST=rs_ctest_${RUN_ID}_$backend
    rabbitmqctl -q add_vhost "$VHOST" >/dev/null
    rabbitmqctl -q set_permissions -p "$VHOST" "${TEST_RABBITMQ_USER:-guest}" '.*' '.*' '.*' >/dev/null
    ENVS=(-e "RESTAURANT_RABBITMQ__HOST=127.0.0.1" -e "RESTAURANT_RABBITMQ__VHOST=$VHOST"
        -e "RESTAURANT_RABBITMQ__PORT=${TEST_RABBITMQ_PORT:-5672}"
        -e "RESTAURANT_MQTT__ENABLED=false"
        -e "RESTAURANT_KITCHEN__COOKING_SECONDS__TAKEOUT=0.5")
    MOUNTS=()
    if [[ $backend == postgres ]]; then
        PGDB=rs_ctest_$RUN_ID
        psql -X -q -h 127.0.0.1 -p "${TEST_PG_PORT:-5432}" -U postgres -d postgres \
            -c "create database $PGDB" >/dev/null
        ENVS+=(-e "RESTAURANT_DATABASE__BACKEND=postgres" -e "DB_HOST=127.0.0.1"
            -e "DB_PORT=${TEST_PG_PORT:-5432}" -e "DB_USER=postgres" -e "DB_NAME=$PGDB")
    else
        # One SQLite file shared by the containers: a volume the image's user (10001) owns.
        DATADIR=$(mktemp -d /tmp/rs-ctest.XXXXXX)
        chown 10001:10001 "$DATADIR"
        ENVS+=(-e "RESTAURANT_DATABASE__BACKEND=sqlite")
        MOUNTS=(-v "$DATADIR:/var/lib/restaurant-system")
    fi
    oport=$(free_port)
    run_container "rs-ctest-$RUN_ID-order-$backend" "$oport" --mode=order-service --port="$oport"
    tport=$(free_port)
    while [[ $tport == "$oport" ]]; do tport=$(free_port); done
    run_container "rs-ctest-$RUN_ID-tracking-$backend" "$tport" --mode=tracking-service --port="$tport"
    run_container "rs-ctest-$RUN_ID-chef-$backend" none --mode=kitchen-worker --worker-name=chef_container

    check "[$backend] order-service container passes its HEALTHCHECK (GET /health)" \
        wait_healthy "rs-ctest-$RUN_ID-order-$backend"
    check "[$backend] tracking-service container passes its HEALTHCHECK" \
        wait_healthy "rs-ctest-$RUN_ID-tracking-$backend"
    local top
    top=$("${PODMAN[@]}" top "rs-ctest-$RUN_ID-order-$backend" user comm 2>/dev/null | awk 'NR > 1 { print $1 }' | sort -u | tr '\n' ' ')
    check "[$backend] the service process runs as the image's user, not root ($top)" \
        bash -c "[[ -n '$top' && ' $top' != *' root '* ]]"

    number=$(curl -sf -X POST "http://127.0.0.1:$oport/orders" -H 'Content-Type: application/json' \
        -d '{"customer_name": "Container Test", "order_type": "takeout",
             "items": [{"name": "Test Pizza", "quantity": 1, "price": 15.99}]}' | jq -r .order_number) || number=""
    check "[$backend] POST /orders to the container answers with an order number ($number)" \
        test -n "$number" -a "$number" != null
    status=""
    for ((i = 0; i < 120 && ${#number} > 4; i++)); do
        status=$(curl -sf "http://127.0.0.1:$tport/orders/$number/status" | jq -r .current_status) || status=""
        [[ $status == ready ]] && break
        sleep 0.5
    done
    check "[$backend] the kitchen worker container cooks it: $number is '$status'" test "$status" = ready
    if [[ $status != ready ]]; then
        "${PODMAN[@]}" logs --tail 20 "rs-ctest-$RUN_ID-chef-$backend" >&2 || true
    fi
    local worker
    worker=$(curl -sf "http://127.0.0.1:$tport/workers/status" | jq -r '.[] | select(.worker_name == "chef_container") | .status') || worker=""
    check "[$backend] the worker shows online in the tracking service ($worker)" test "$worker" = online

    # A clean stop: SIGTERM through podman, exit status 0.
    local c code
    for c in order chef tracking; do
        "${PODMAN[@]}" stop -t 20 "rs-ctest-$RUN_ID-$c-$backend" >/dev/null
        code=$("${PODMAN[@]}" inspect --format '{{.State.ExitCode}}' "rs-ctest-$RUN_ID-$c-$backend")
        check "[$backend] $c container stops cleanly on SIGTERM (exit $code)" test "$code" = 0
    done
    cleanup
}

run_backend sqlite
run_backend postgres

echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
