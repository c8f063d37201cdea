#!/usr/bin/env bash
# packaging/repro-rabbitmq-recovery.sh: issue 21's RabbitMQ recovery crash, in a minute
# (docs/power-cut.md).
#
#   sudo packaging/repro-rabbitmq-recovery.sh v1|v2 DEB
#
# The systemd stage's box image (packaging/box-lib.sh) booted with systemd-nspawn, DEB installed,
# the order service only (no kitchen worker: the orders' messages stay in the queues). Then:
# 20 orders; the box killed (SIGKILL to its systemd, so RabbitMQ stops uncleanly); the vhost's
# msg_stores/vhosts/ID/.config emptied, which is what a power cut in the half minute after
# RabbitMQ's first start leaves of that file (RabbitMQ writes it without fsync; the power-cut
# test reports its size on the VM's disk after real cuts); the box booted again.
#
#   v1: the package's /etc/rabbitmq/conf.d/60-restaurant-system.conf removed (RabbitMQ 3.10's
#       default classic queue index, version 1)
#   v2: the package as shipped (classic_queue.default_version = 2)
#
# Prints what RabbitMQ did on the second start: the unit's state after at most 120 s, the crash
# lines of its log, and the messages in the queues. Exit 0 when the broker came back with all 20
# messages, 1 when it did not. Needs root.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034 # read by scripts/lib.sh
RS_LOG_TAG=repro-rabbitmq
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
# shellcheck source=packaging/box-lib.sh
source "$REPO/packaging/box-lib.sh"

variant=${1:-}
deb=${2:-}
[[ "$variant" == v1 || "$variant" == v2 ]] && [[ -f "$deb" ]] ||
    die "usage: packaging/repro-rabbitmq-recovery.sh v1|v2 DEB"
[[ ${EUID} -eq 0 ]] || die "run as root (systemd-nspawn)"
deb=$(realpath "$deb")
ORDERS=20

work=$(mktemp -d /var/tmp/restaurant-repro.XXXXXX)
ROOT="$work/root"
nspawn_pid=""
cleanup() {
    local rc=$?
    set +e
    [[ -n "$nspawn_pid" ]] && kill -KILL "$(pgrep -P "$nspawn_pid" -x systemd)" 2>/dev/null
    [[ -n "$nspawn_pid" ]] && wait "$nspawn_pid" 2>/dev/null
    umount "$ROOT" 2>/dev/null
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT

img=$(box_image)
mkdir -p "$ROOT" "$work/upper" "$work/ow"
mount -t overlay overlay -o "lowerdir=$img,upperdir=$work/upper,workdir=$work/ow" "$ROOT"
cp "$deb" "$ROOT/root/"
cat >"$ROOT/root/setup.sh" <<EOF
set -e
export DEBIAN_FRONTEND=noninteractive
[ -s /etc/machine-id ] || systemd-machine-id-setup
dpkg -i /root/$(basename "$deb") >/dev/null
restaurant-system token create repro --role pos | tail -n 1 >/root/token
systemctl enable restaurant-order
EOF
systemd-nspawn --register=no --keep-unit -q --private-network -D "$ROOT" \
    --hostname="$RS_BOX_HOSTNAME" /bin/sh /root/setup.sh >"$work/setup.log" 2>&1 </dev/null ||
    { cat "$work/setup.log"; die "setting up the box"; }
if [[ "$variant" == v1 ]]; then
    rm "$ROOT/etc/rabbitmq/conf.d/60-restaurant-system.conf"
fi
token=$(cat "$ROOT/root/token")

boot() {
    systemd-nspawn --register=no --keep-unit -q --private-network -D "$ROOT" \
        --hostname="$RS_BOX_HOSTNAME" -b >>"$work/console.log" 2>&1 </dev/null &
    nspawn_pid=$!
    local i
    for i in $(seq 100); do
        pid1=$(pgrep -P "$nspawn_pid" -x systemd || true)
        [[ -n "$pid1" ]] && return 0
        sleep 0.1
    done
    die "the box did not boot"
}
in_box() { nsenter -t "$pid1" -a "$@"; }
# wait_active UNIT SECONDS: 0 once UNIT is active.
wait_active() {
    local i
    for ((i = 0; i < $2; i++)); do
        [[ "$(in_box systemctl is-active "$1" 2>/dev/null)" == active ]] && return 0
        sleep 1
    done
    return 1
}
queued() { in_box rabbitmqctl -q list_queues name messages 2>/dev/null | awk '$1 ~ /^kitchen_/ { n += $2 } END { print n + 0 }'; }

log "$variant: first boot"
boot
wait_active rabbitmq-server 120 || die "RabbitMQ did not start on the first boot"
wait_active restaurant-order 120 || die "the order service did not start"
for ((i = 0; i < ORDERS; i++)); do
    in_box curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d '{"customer_name":"Power Cut","order_type":"takeout","items":[{"name":"Soup","quantity":1,"price":9.5}]}' \
        http://127.0.0.1:3000/orders
done
for i in $(seq 60); do
    [[ "$(queued)" -ge $ORDERS ]] && break
    sleep 1
done
log "$variant: $(queued) messages in the kitchen queues; power cut (SIGKILL to the box's systemd)"
kill -KILL "$pid1"
wait "$nspawn_pid" 2>/dev/null || true
nspawn_pid=""

vdir=$(echo "$ROOT"/var/lib/rabbitmq/mnesia/rabbit@"$RS_BOX_HOSTNAME"/msg_stores/vhosts/*/)
log "$variant: queue index files: $(find "$vdir/queues" -type f | sed 's/.*\.//' | sort | uniq -c | tr -s ' \n' ' ')"
log "$variant: ${vdir#"$ROOT"}.config was: $(tr '\n' ' ' <"$vdir/.config"); emptied"
: >"$vdir/.config"

log "$variant: second boot"
boot
t0=$(date +%s)
if wait_active rabbitmq-server 120; then
    state="active after $(($(date +%s) - t0)) s"
else
    state="$(in_box systemctl is-active rabbitmq-server 2>/dev/null || true) after 120 s"
fi
crashes=$(cat "$ROOT"/var/log/rabbitmq/*.log 2>/dev/null | grep -c badmatch || true)
log "$variant: rabbitmq-server $state; log lines with badmatch: $crashes"
grep -h -A 12 -m 1 "exception exit: {{badmatch" "$ROOT"/var/log/rabbitmq/*.log 2>/dev/null | cut -c1-200 | sed "s/^/    /" || true
n=$(queued)
log "$variant: messages in the kitchen queues after the second boot: $n of $ORDERS"
[[ "$state" == active* && "$n" -ge $ORDERS ]]
