#!/usr/bin/env bash
# packaging/test-multibox.sh: one kitchen on three boxes (issue 25, docs/multi-box.md):
#
#   sudo packaging/test-multibox.sh
#
# Three Debian 12 boxes (the cached tree of packaging/box-lib.sh, an overlay each) booted with
# systemd-nspawn, systemd as PID 1, on a bridge this test creates with addresses from a private
# test-only range: only the three boxes and this machine's end of the bridge are ever sent
# traffic. Each box gets the .deb with apt, then the operator's scripts it ships
# (/usr/share/restaurant-system/multi-box/): RabbitMQ cluster, pg_auto_failover (box 3 the
# monitor, box 1 the primary, box 2 the synchronous secondary), our config; every box runs the
# order API, tracking and a kitchen worker.
#
# Scenarios: a POS load (20 orders/s, Idempotency-Keys, retried on another box) while each box
# in turn loses power (SIGKILL of its PID 1) and boots again; a network split (one box's link
# taken down on this side of the bridge); the kitchen's orders/s on one box and on three.
# Prints PASS:/FAIL: per check, SCENARIO lines with the figures, "N passed, N failed"; exit 0
# only when nothing failed. Needs root, apt, python3; RS_DEB=FILE tests that package instead of
# running cargo deb.
#
# Knobs: RS_DEB; RS_BOX_KEEP=1 (keep the work directory); RS_MB_NET (10.213.77: a /24 that must
# be unused on this machine); RS_MB_BRIDGE (rsmb0); RS_MB_RATE (20 orders/s);
# RS_MB_STOP_AFTER=boot|cluster|services (stop early, for work on the test itself).

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034 # read by scripts/lib.sh
RS_LOG_TAG=test-multibox
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
# shellcheck source=packaging/box-lib.sh
source "$REPO/packaging/box-lib.sh"
cd "$REPO"

NET=${RS_MB_NET:-10.213.77}
BR=${RS_MB_BRIDGE:-rsmb0}
RATE=${RS_MB_RATE:-20}
STOP_AFTER=${RS_MB_STOP_AFTER:-}
NAMES=(mb1 mb2 mb3)
SHARE=/usr/share/restaurant-system/multi-box
MB_DIR=/etc/restaurant-system/multi-box
UNITS_OF() { echo restaurant-order restaurant-tracking "restaurant-kitchen@$1"; }
LOAD="$REPO/packaging/multibox_load.py"
GAP_TARGET=15

passed=0
failed=0
work=""
bridge=""
declare -A NSP P1 ROOTS MOUNTED BOOTS INSTALLER
SCENARIOS=()

# pass, fail, check, fatal, scenario: packaging/box-lib.sh.
secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------------------------------------
# The boxes

addr() { echo "$NET.$((10 + ${1#mb}))"; }
# mb NAME CMD...: CMD as root in box NAME.
mb() {
    local n=$1
    shift
    box_exec "${P1[$n]}" "$@"
}

boot() { # NAME
    local n=$1 rc=0
    BOOTS[$n]=$((${BOOTS[$n]:-0} + 1))
    box_start "$work/$n/boot-${BOOTS[$n]}.log" "${ROOTS[$n]}" "$n" --machine="$n" \
        --network-bridge="$BR" || rc=$?
    NSP[$n]=$BOX_NSPAWN_PID
    P1[$n]=$BOX_PID1
    return $rc
}
power_cut() { # NAME
    box_power_cut "${NSP[$1]}" "${P1[$1]}"
    NSP[$1]=""
    P1[$1]=""
}
stop_all() {
    local n
    for n in "${NAMES[@]}"; do
        [[ -n "${P1[$n]:-}" ]] && kill -KILL "${P1[$n]}" 2>/dev/null
        if [[ -n "${NSP[$n]:-}" ]]; then
            wait_gone "${NSP[$n]}" 20 || kill -KILL "${NSP[$n]}" 2>/dev/null
            wait "${NSP[$n]}" 2>/dev/null
        fi
        NSP[$n]=""
        P1[$n]=""
    done
}

cleanup() {
    local rc=$? n
    set +e
    [[ -n "${load_pid:-}" ]] && kill "$load_pid" 2>/dev/null
    stop_all
    for n in "${NAMES[@]}"; do
        [[ -n "${MOUNTED[$n]:-}" ]] && { umount "${ROOTS[$n]}" || umount -l "${ROOTS[$n]}"; }
    done
    [[ -n "$bridge" ]] && ip link del "$BR"
    if [[ -n "$work" && -d "$work" ]]; then
        if [[ -n "${RS_BOX_KEEP:-}" ]]; then
            log "kept $work"
        else
            rm -rf --one-file-system "$work"
        fi
    fi
    printf '\n'
    printf '%s\n' "${SCENARIOS[@]}"
    printf '%d passed, %d failed\n' "$passed" "$failed"
    if [[ $failed -gt 0 && $rc -eq 0 ]]; then
        rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ ${EUID} -eq 0 ]] || die "run as root: this test creates a bridge and boots containers with systemd-nspawn"
need_apt debootstrap systemd-container iproute2 python3 util-linux procps
install -d -m 0755 "$RS_BOX_CACHE"
work=$(mktemp -d /var/tmp/restaurant-multibox.XXXXXX)
t_start=$(date +%s)

# ---------------------------------------------------------------------------------------------
# The package

if [[ -n "${RS_DEB:-}" ]]; then
    deb=$(realpath "$RS_DEB")
else
    ensure_tools
    log "building the package (cargo deb)"
    if ! cargo deb >"$work/cargo-deb.out" 2>"$work/cargo-deb.err"; then
        tail -n 30 "$work/cargo-deb.err" | sed 's/^/    /'
        fatal "cargo deb builds the package"
    fi
    deb=$(tail -n 1 "$work/cargo-deb.out")
    [[ "$deb" = /* ]] || deb="$REPO/$deb"
fi
[[ -f "$deb" ]] || fatal "the package $deb exists"
cp "$deb" "$work/"
deb="$work/$(basename "$deb")"
ships_scripts() {
    dpkg-deb -c "$deb" >"$work/deb.list"
    grep -q "\.$SHARE/join-rabbitmq\$" "$work/deb.list"
}
check "the package ships the operator's join scripts in $SHARE" ships_scripts

# ---------------------------------------------------------------------------------------------
# 1. The network and three boxes

# The test's range must be unused here: no route, no address, no bridge of that name.
if ip -4 route show | grep -q "^$NET\." || ip -4 addr show | grep -q "inet $NET\."; then
    fatal "$NET.0/24 is in use on this machine: set RS_MB_NET to an unused private /24"
fi
if ip link show "$BR" >/dev/null 2>&1; then
    # Left by a run that was killed before its clean-up: ours, and unused once no port is on it.
    [[ -z "$(ip link show master "$BR")" ]] || fatal "the bridge $BR exists and has ports: another run of this test? (or set RS_MB_BRIDGE)"
    log "removing the bridge $BR a killed run left"
    ip link del "$BR"
fi
ip link add "$BR" type bridge
bridge=1
ip addr add "$NET.1/24" dev "$BR"
ip link set "$BR" up

t0=$(date +%s)
img=$(box_image) || fatal "the box image"
log "box image $img ($(($(date +%s) - t0)) s)"
for n in "${NAMES[@]}"; do
    mkdir -p "$work/$n/root" "$work/$n/upper" "$work/$n/ovl"
    ROOTS[$n]="$work/$n/root"
    mount -t overlay overlay -o "lowerdir=$img,upperdir=$work/$n/upper,workdir=$work/$n/ovl" \
        "${ROOTS[$n]}" || fatal "overlay mount for $n"
    MOUNTED[$n]=1
    r=${ROOTS[$n]}
    # What the box's installer set up: its name, and its address on the LAN (systemd-networkd;
    # no gateway: nothing leaves the bridge).
    echo "$n" >"$r/etc/hostname"
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' >"$r/etc/hosts"
    mkdir -p "$r/etc/systemd/network" "$r/etc/systemd/system/multi-user.target.wants" \
        "$r/etc/systemd/system/sockets.target.wants"
    printf '[Match]\nName=host0\n\n[Network]\nAddress=%s/24\nLinkLocalAddressing=no\n' "$(addr "$n")" \
        >"$r/etc/systemd/network/10-lan.network"
    ln -sf /lib/systemd/system/systemd-networkd.service \
        "$r/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    ln -sf /lib/systemd/system/systemd-networkd.socket \
        "$r/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
    sed -i 's/^port = [0-9]*/port = 5432/' "$r"/etc/postgresql/*/main/postgresql.conf
    cp "$deb" "$r/root/"
done

t0=$(date +%s)
for n in "${NAMES[@]}"; do
    check "$n boots with systemd as PID 1 on bridge $BR" boot "$n"
    [[ -n "${P1[$n]}" ]] || fatal "$n did not boot (log: $work/$n/boot-1.log)"
done
# reaches FROM TO: a TCP connection to a closed port of TO is refused: its address answers.
reaches() {
    local out
    out=$(timeout 5 nsenter -t "${P1[$1]}" -n bash -c "exec 3<>/dev/tcp/$(addr "$2")/9" 2>&1 || true)
    [[ $out == *refused* ]]
}
pings() {
    local a b
    for a in "${NAMES[@]}"; do
        for b in "${NAMES[@]}"; do
            [[ $a == "$b" ]] || reaches "$a" "$b" || { echo "$a cannot reach $b"; return 1; }
        done
    done
}
check "the boxes reach each other on $NET.0/24" wait_until 60 pings
scenario boot "three boxes up in $(($(date +%s) - t0)) s (image $(basename "$img"))"
[[ $STOP_AFTER == boot ]] && exit 0

# ---------------------------------------------------------------------------------------------
# 2. What the operator does (docs/multi-box.md): install, secrets, clusters, config

t0=$(date +%s)
# The three installs at once (each box is its own machine).
for n in "${NAMES[@]}"; do
    mb "$n" env DEBIAN_FRONTEND=noninteractive apt-get -q -y install "/root/$(basename "$deb")" \
        >"$work/$n/install.log" 2>&1 &
    INSTALLER[$n]=$!
done
for n in "${NAMES[@]}"; do
    if wait "${INSTALLER[$n]}"; then
        pass "$n: apt-get install ./$(basename "$deb")"
    else
        tail -n 20 "$work/$n/install.log" | sed 's/^/    /'
        fatal "$n: apt-get install ./$(basename "$deb")"
    fi
done
install_secs=$(($(date +%s) - t0))

# cluster.conf: the shipped example with this network's names and addresses.
sed -e "s/^BOXES=.*/BOXES=\"mb1=$(addr mb1) mb2=$(addr mb2) mb3=$(addr mb3)\"/" \
    -e 's/^PG_MONITOR=.*/PG_MONITOR=mb3/' -e 's/^PG_NODES=.*/PG_NODES="mb1 mb2"/' \
    -e "s#^LAN=.*#LAN=$NET.0/24#" "${ROOTS[mb1]}$SHARE/cluster.conf.example" >"$work/cluster.conf"
check "make-secrets on mb1" mb mb1 "$SHARE/make-secrets"
for n in "${NAMES[@]}"; do
    install -d -m 0750 "${ROOTS[$n]}$MB_DIR"
    install -m 0644 "$work/cluster.conf" "${ROOTS[$n]}$MB_DIR/cluster.conf"
    # As the operator's scp does: the same secrets on every box, root only.
    [[ $n == mb1 ]] || install -m 0600 "${ROOTS[mb1]}$MB_DIR/secrets.env" "${ROOTS[$n]}$MB_DIR/secrets.env"
done

# join STEP NAME: one of the shipped scripts on box NAME, timed, its output kept.
join() {
    local step=$1 n=$2 t
    t=$(date +%s)
    if mb "$n" "$SHARE/$step" >"$work/$n/$step.log" 2>&1; then
        pass "$n: $step ($(($(date +%s) - t)) s): $(tail -n 1 "$work/$n/$step.log")"
    else
        fail "$n: $step"
        tail -n 25 "$work/$n/$step.log" | sed 's/^/    /'
        return 1
    fi
}
t0=$(date +%s)
for n in "${NAMES[@]}"; do join join-rabbitmq "$n" || fatal "RabbitMQ cluster"; done
rabbit_running() { # NAME: how many nodes of the cluster box NAME's node sees running
    mb "$1" rabbitmqctl -q eval 'length(rabbit_nodes:all_running()).' 2>/dev/null || echo 0
}
all_rabbits() {
    local n
    for n in "${NAMES[@]}"; do [[ $(rabbit_running "$n") == 3 ]] || return 1; done
}
check "RabbitMQ: every box's node sees the three nodes running" wait_until 120 all_rabbits
partition_handling() { mb mb2 rabbitmqctl -q eval 'application:get_env(rabbit, cluster_partition_handling).' | grep -q pause_minority; }
check "RabbitMQ: cluster_partition_handling is pause_minority" partition_handling
rabbit_secs=$(($(date +%s) - t0))

t0=$(date +%s)
for n in mb3 mb1 mb2; do join join-postgres "$n" || fatal "pg_auto_failover formation"; done
# pg_state: NAME|REPORTED|ASSIGNED per database node, from the monitor.
pg_state() {
    mb mb3 runuser -u postgres -- env PGDATA=/var/lib/postgresql/15/autofailover pg_autoctl show state 2>/dev/null |
        awk -F'|' 'NR > 2 { for (i = 1; i <= NF; i++) gsub(/^ +| +$/, "", $i); print $1 "|" $6 "|" $7 }'
}
pg_settled() { # a primary and a secondary, each where the monitor wants it
    local s
    s=$(pg_state)
    echo "$s"
    [[ $(grep -c '^[^|]*|primary|primary$' <<<"$s") -eq 1 && $(grep -c '^[^|]*|secondary|secondary$' <<<"$s") -eq 1 ]]
}
check "pg_auto_failover: mb1 primary and mb2 secondary" wait_until 180 pg_settled
pg_secs=$(($(date +%s) - t0))
sync_standby() {
    # pg_auto_failover names its standbys in synchronous_standby_names as "ANY 1 (...)": a
    # quorum of one, which PostgreSQL reports as sync_state "quorum".
    mb mb1 runuser -u postgres -- psql -XAtq -h /var/run/postgresql -c "show synchronous_standby_names" -c "select application_name || ' ' || sync_state from pg_stat_replication" | tee /dev/stderr | grep -qE ' (sync|quorum)$'
}
check "pg_auto_failover: the secondary is synchronous (synchronous_standby_names)" sync_standby
scenario clusters "install ${install_secs} s, rabbitmq cluster ${rabbit_secs} s, pg_auto_failover formation ${pg_secs} s"
[[ $STOP_AFTER == cluster ]] && exit 0

for n in "${NAMES[@]}"; do join configure-restaurant "$n" || fatal "configure-restaurant"; done
# The test's own setting: short cooking, so the load's orders are ready in seconds.
for n in "${NAMES[@]}"; do
    printf '[kitchen.cooking_seconds]\ndine_in = 0.05\ntakeout = 0.05\ndelivery = 0.05\n' \
        >"${ROOTS[$n]}/etc/restaurant-system/conf.d/80-test.toml"
    mb "$n" chmod 0644 /etc/restaurant-system/conf.d/80-test.toml
done
sqlite_refused() { # issue 25 item 5: a multi-box configuration refuses SQLite (exit 2, one line)
    local out rc=0
    out=$(mb mb1 runuser -u restaurant -- env RESTAURANT_DATABASE__BACKEND=sqlite restaurant-system validate 2>&1) || rc=$?
    echo "exit $rc: $out"
    [[ $rc -eq 2 && $(wc -l <<<"$out") -eq 1 ]]
}
check "a multi-box configuration refuses SQLite with exit 2 and one line" sqlite_refused
units_active() { # NAME
    local u
    for u in $(UNITS_OF "$1"); do mb "$1" systemctl is-active -q "$u" || { echo "$1: $u not active"; return 1; }; done
}
for n in "${NAMES[@]}"; do
    # shellcheck disable=SC2046 # one word per unit
    mb "$n" systemctl enable --now $(UNITS_OF "$n") >"$work/$n/enable.log" 2>&1
    check "$n: order API, tracking and kitchen worker active" wait_until 90 units_active "$n"
done
token=$(mb mb1 runuser -u restaurant -- restaurant-system token create multibox-pos --role pos 2>"$work/token.err" | tail -n 1)
[[ -n $token ]] || { cat "$work/token.err"; fatal "a POS token (restaurant-system token create)"; }
boxes_csv="$(addr mb1),$(addr mb2),$(addr mb3)"
# The database, on whichever node is the primary now.
primary() { pg_state | awk -F'|' '$2 == "primary" { print $1 }' | head -n 1; }
db() {
    local p
    p=$(primary)
    [[ -n $p ]] || return 1
    mb "$p" runuser -u postgres -- psql -XAtq -h /var/run/postgresql -d restaurant_db -c "$1"
}
probe() { # a few orders through every box
    : >"$work/probe.out"
    python3 "$LOAD" load "$boxes_csv" "$token" 5 2 "$work/probe.out" "$work/none" >/dev/null
    [[ $(grep -c '"code": 200' "$work/probe.out") -ge 9 ]] || { cat "$work/probe.out"; return 1; }
}
check "orders through every box's API over HTTPS with a POS token" probe
[[ $STOP_AFTER == services ]] && exit 0

# ---------------------------------------------------------------------------------------------
# 3. Every box in turn loses power under a steady POS load

# Orders of one run: the JSON lines of the load client; numbers answered 200.
accepted_of() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r["code"] == 200: print(r["number"])' "$1"; }
# answered_pairs FILE: "NUMBER|CUSTOMER NAME" of every order answered 200.
answered_pairs() { python3 -c 'import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r["code"] == 200: print(r["number"] + "|" + r["name"])' "$1"; }
# verdict FILE LABEL: every 200 is in the database and ready, none twice, none cooked twice.
verdict() {
    local f=$1 label=$2 nums keys stored ready dup cooked missing
    mapfile -t nums < <(accepted_of "$f")
    printf '%s\n' "${nums[@]}" >"$work/$label.numbers"
    keys=$(python3 -c 'import json,sys; print(len({json.loads(l)["key"] for l in open(sys.argv[1])}))' "$f")
    wait_until 180 all_ready "$work/$label.numbers" || true
    db "select number || ' ' || status from orders where customer_name like 'POS %'" >"$work/$label.db"
    # Stored as answered: the same number with the same customer (a number given again to another
    # order after a failover means the answered one was lost).
    answered_pairs "$f" | sort -u >"$work/$label.pairs"
    db "select number || '|' || customer_name from orders where customer_name like 'POS %'" | sort -u >"$work/$label.dbpairs"
    stored=$(comm -12 "$work/$label.pairs" "$work/$label.dbpairs" | wc -l)
    ready=$(awk 'NR == FNR { w[$1] = 1; next } ($1 in w) && ($2 == "ready" || $2 == "completed")' "$work/$label.numbers" "$work/$label.db" | wc -l)
    missing=$((${#nums[@]} - stored))
    # Doubled: one POS order (customer "POS KEY") stored twice, or cooked twice.
    dup=$(db "select count(*) from (select customer_name from orders where customer_name like 'POS %' group by 1 having count(*) > 1) d")
    cooked=$(db "select count(*) from (select order_id from order_status_log where status = 'ready' group by order_id having count(*) > 1) d")
    check "$label: every order answered 200 (${#nums[@]}) is stored" test "$missing" -eq 0
    check "$label: every order answered 200 reaches ready ($ready of ${#nums[@]})" test "$ready" -eq "${#nums[@]}"
    check "$label: no POS order stored twice ($dup) and none cooked twice ($cooked)" test "$dup" -eq 0 -a "$cooked" -eq 0
    check "$label: one order number per Idempotency-Key" test "$(sort -u "$work/$label.numbers" | wc -l)" -eq "${#nums[@]}"
    VERDICT="keys $keys accepted ${#nums[@]} stored $stored ready $ready lost $missing doubled $dup cooked_twice $cooked"
}
all_ready() { # FILE of numbers
    local total ok
    total=$(wc -l <"$1")
    ok=$(db "select number from orders where status in ('ready', 'completed') and customer_name like 'POS %'" | grep -cxF -f "$1" || true)
    [[ $ok -eq $total ]]
}

# Back after a cut: the box's units, its RabbitMQ node in the cluster, PostgreSQL settled.
rejoined() { # NAME
    units_active "$1" && [[ $(rabbit_running "$1") == 3 ]] && all_rabbits && pg_settled
}

load_out="$work/load.jsonl"
: >"$load_out"
python3 "$LOAD" load "$boxes_csv" "$token" "$RATE" 1800 "$load_out" "$work/stop-load" >"$work/load.summary" 2>"$work/load.err" &
load_pid=$!
sleep 15
cuts=()
for n in "${NAMES[@]}"; do
    role=$(pg_state | awk -F'|' -v n="$n" '$1 == n { print $2 }')
    log "power cut of $n (PostgreSQL: ${role:-monitor})"
    cut_at=$(date +%s.%N)
    power_cut "$n"
    cuts+=("$cut_at")
    check "$n boots again right after its power cut" boot "$n"
    if wait_until 300 rejoined "$n"; then
        pass "$n rejoins by itself: its units, RabbitMQ (3 nodes running), PostgreSQL (primary + secondary) in $(secs_since "$cut_at") s"
    else
        fail "$n rejoins by itself after its power cut"
        { units_active "$n"; echo "rabbit nodes running seen from $n: $(rabbit_running "$n")"; pg_state; } 2>&1 | sed 's/^/    /'
    fi
    echo "$n ${role:-monitor} $(secs_since "$cut_at")" >>"$work/cuts"
    sleep 10
done
touch "$work/stop-load"
wait "$load_pid" || true
load_pid=""
cat "$work/load.summary"
mapfile -t gap_lines < <(python3 "$LOAD" gaps "$load_out" "${cuts[@]}")
i=0
for n in "${NAMES[@]}"; do
    gap=$(cut -d' ' -f2 <<<"${gap_lines[$i]}")
    read -r _ role back < <(grep "^$n " "$work/cuts")
    check "cut of $n ($role): longest gap in accepted orders ${gap} s (target ${GAP_TARGET} s)" \
        awk -v g="$gap" -v t="$GAP_TARGET" 'BEGIN { exit !(g <= t) }'
    scenario "power-cut-$n" "pg_role $role gap_seconds $gap seconds_to_rejoined $back"
    i=$((i + 1))
done
verdict "$load_out" power-cuts
scenario power-cuts "$VERDICT load $(tr -d '{}"' <"$work/load.summary")"

# ---------------------------------------------------------------------------------------------
# 4. A network split: the primary's box cut off from the others

iso=$(primary)
log "network split: $iso (the primary) cut off"
split_out="$work/split.jsonl"
: >"$split_out"
others=""
for n in "${NAMES[@]}"; do [[ $n == "$iso" ]] || others+="${others:+,}$(addr "$n")"; done
python3 "$LOAD" load "$boxes_csv" "$token" "$RATE" 1800 "$split_out" "$work/stop-split" >"$work/split.summary" 2>&1 &
load_pid=$!
sleep 5
split_at=$(date +%s.%N)
ip link set "vb-$iso" down
# What the isolated box answers: its own POS on its own side of the split (loopback).
: >"$work/isolated.codes"
for ((i = 0; i < 45; i++)); do
    code=$(mb "$iso" curl -s -m 5 -o "$work/isolated.body" -w '%{http_code}' -X POST http://127.0.0.1:3000/orders \
        -H 'Content-Type: application/json' -H "Idempotency-Key: split-$i" \
        -d "{\"customer_name\":\"POS split-$(tr 0-9 a-j <<<"$i")\",\"order_type\":\"takeout\",\"items\":[{\"name\":\"Soup\",\"quantity\":1,\"price\":5.5}]}" || true)
    echo "$(secs_since "$split_at") $code $(jq -r '.order_number // "-"' "$work/isolated.body" 2>/dev/null || echo -) split-$(tr 0-9 a-j <<<"$i")" >>"$work/isolated.codes"
    sleep 1
done
ip link set "vb-$iso" up
healed_at=$(date +%s.%N)
iso_codes=$(awk '{ print $2 }' "$work/isolated.codes" | sort | uniq -c | awk '{ printf "%s:%s ", $2, $1 }')
iso_200=$(awk '$2 == 200' "$work/isolated.codes" | wc -l)
log "isolated $iso answered (code:count) $iso_codes"
first_refusal=$(awk '$2 != 200 { print $1; exit }' "$work/isolated.codes")
check "split: the isolated box ($iso) takes no order the others never see (answers: $iso_codes)" test "$iso_200" -eq 0
check "split healed: every box rejoins by itself" wait_until 300 rejoined "$iso"
heal_secs=$(secs_since "$healed_at")
sleep 10
touch "$work/stop-split"
wait "$load_pid" || true
load_pid=""
# The isolated box's own 200s count as accepted orders too.
awk '$2 == 200 && $3 != "-" { printf "{\"key\": \"%s\", \"name\": \"POS %s\", \"code\": 200, \"number\": \"%s\", \"answered\": 0}\n", $4, $4, $3 }' \
    "$work/isolated.codes" >>"$split_out"
verdict "$split_out" split
mapfile -t gap_lines < <(python3 "$LOAD" gaps "$split_out" "$split_at")
scenario split "isolated $iso answers $iso_codes first_non_200_after ${first_refusal:-never} s; others' gap $(cut -d' ' -f2 <<<"${gap_lines[0]}") s; rejoined ${heal_secs} s after healing; $VERDICT"

# ---------------------------------------------------------------------------------------------
# 5. The kitchen's orders/s: one box's worker, then all three, on the same backlog

kitchen_rate() { # LABEL WORKER-BOX...
    local label=$1 f="$work/backlog-$1.jsonl" t0 n
    shift
    for n in "${NAMES[@]}"; do mb "$n" systemctl stop "restaurant-kitchen@$n"; done
    : >"$f"
    python3 "$LOAD" load "$boxes_csv" "$token" 40 8 "$f" "$work/none" >/dev/null
    accepted_of "$f" >"$work/backlog-$label.numbers"
    t0=$(date +%s.%N)
    for n in "$@"; do mb "$n" systemctl start "restaurant-kitchen@$n"; done
    wait_until 300 all_ready "$work/backlog-$label.numbers" || fail "$label: the backlog was not cooked within 300 s"
    awk -v n="$(wc -l <"$work/backlog-$label.numbers")" -v s="$(secs_since "$t0")" 'BEGIN { printf "%.1f", n / s }'
}
one=$(kitchen_rate one-box mb1)
three=$(kitchen_rate three-boxes mb1 mb2 mb3)
for n in "${NAMES[@]}"; do mb "$n" systemctl start "restaurant-kitchen@$n"; done
scenario kitchen-throughput "orders/s one box $one three boxes $three (cooking 0.05 s an order, prefetch 1)"

scenario total "$(($(date +%s) - t_start)) s"
