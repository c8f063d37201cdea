#!/usr/bin/env bash
# packaging/test-deb.sh: build the Debian package, install it, check it, run every unit's command
# line the way systemd would, upgrade, remove and purge it. Runs alone or from scripts/test.sh.
#
#   sudo packaging/test-deb.sh
#
# It INSTALLS AND PURGES the restaurant-system package on this machine (a package already
# installed is purged first, with its configuration): run it on a CI or development machine,
# never on a kitchen PC in service.
#
# Needs root, Rust, apt. Installs what is missing: cargo-deb, Debian's systemd package (for
# systemd-analyze), RabbitMQ (started when not running) and Mosquitto (a private broker on a free
# port is started for the display bridge). Systemd need not be PID 1: the units' ExecStart lines
# are started here, as user restaurant, with a NOTIFY_SOCKET owned by this script
# (packaging/sd_notify_check.py). Each run gets a fresh SQLite file and a fresh RabbitMQ vhost,
# both removed afterwards.
#
# Prints one PASS:/FAIL: line per check and "N passed, N failed" at the end; exit status 0 only
# when nothing failed.
#
# Knobs: RS_MAX_EXPOSURE (2.0): highest acceptable "systemd-analyze security" exposure per unit.
#        RS_DEB_KEEP=1: keep the temporary directory (logs of every run) for inspection.
#        RS_DEB=FILE: test this already built package instead of running cargo deb.

set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC2034 # read by scripts/lib.sh
RS_LOG_TAG=test-deb
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
cd "$REPO"

PKG=restaurant-system
BIN=/usr/bin/restaurant-system
CONF=/etc/restaurant-system/config.toml
STATE=/var/lib/restaurant-system
UNIT_DIR=/lib/systemd/system
SVC_USER=restaurant
WORKER=deb_test_worker
MAX_EXPOSURE=${RS_MAX_EXPOSURE:-2.0}
PY=/usr/bin/python3
UNITS=(restaurant-order.service restaurant-tracking.service restaurant-notifier.service
    restaurant-display-bridge.service restaurant-kitchen@.service restaurant-system.target
    restaurant-backup.service restaurant-backup.timer)
EXPECTED_FILES=(
    "$BIN" "$CONF"
    "$UNIT_DIR/restaurant-order.service" "$UNIT_DIR/restaurant-tracking.service"
    "$UNIT_DIR/restaurant-notifier.service" "$UNIT_DIR/restaurant-display-bridge.service"
    "$UNIT_DIR/restaurant-kitchen@.service" "$UNIT_DIR/restaurant-system.target"
    "$UNIT_DIR/restaurant-backup.service" "$UNIT_DIR/restaurant-backup.timer"
    "$UNIT_DIR/restaurant-.service.d/hardening.conf"
    "$UNIT_DIR/rabbitmq-server.service.d/restaurant-system.conf"
    /etc/rabbitmq/conf.d/60-restaurant-system.conf
    /usr/share/man/man1/restaurant-system.1.gz
    /usr/share/doc/restaurant-system/changelog.Debian.gz
    /usr/share/lintian/overrides/restaurant-system
    /usr/share/doc/restaurant-system/README.md /usr/share/doc/restaurant-system/install.md
    /usr/share/doc/restaurant-system/copyright
    /usr/share/doc/restaurant-system/examples/kitchen-worker.toml
    /usr/share/doc/restaurant-system/security.md
    /usr/share/doc/restaurant-system/metrics.md
    /usr/share/doc/restaurant-system/examples/prometheus/prometheus.yml
    /usr/share/doc/restaurant-system/examples/prometheus/restaurant-alerts.yml
    /usr/share/doc/restaurant-system/examples/mosquitto/restaurant.conf
    /usr/share/doc/restaurant-system/examples/mosquitto/restaurant.acl
    /usr/share/doc/restaurant-system/examples/small-box/rabbitmq-env.conf
    /usr/share/doc/restaurant-system/examples/small-box/rabbitmq.conf
    /usr/share/doc/restaurant-system/examples/small-box/postgresql.conf
    /usr/share/restaurant-system/multi-box/cluster.conf.example
    /usr/share/restaurant-system/multi-box/common.sh
    /usr/share/restaurant-system/multi-box/make-secrets
    /usr/share/restaurant-system/multi-box/join-rabbitmq
    /usr/share/restaurant-system/multi-box/join-postgres
    /usr/share/restaurant-system/multi-box/configure-restaurant
)

passed=0
failed=0
work=""
vhost=""
installed_by_us=""

pass() {
    printf 'PASS: %s\n' "$*"
    passed=$((passed + 1))
}

fail() {
    printf 'FAIL: %s\n' "$*"
    failed=$((failed + 1))
}

# check DESCRIPTION CMD...: one check line; the command's output is shown when it fails.
check() {
    local desc=$1
    shift
    if "$@" >"$work/check.out" 2>&1; then
        pass "$desc"
    else
        fail "$desc"
        tail -n 20 "$work/check.out" | sed 's/^/    /'
    fi
}

# fatal DESCRIPTION: a failed check after which nothing else can be tested.
fatal() {
    fail "$*"
    exit 1
}

# count_results FILE: add the PASS:/FAIL: lines of a helper's output to the totals.
count_results() {
    local p f
    p=$(grep -c '^PASS: ' "$1" || true)
    f=$(grep -c '^FAIL: ' "$1" || true)
    passed=$((passed + p))
    failed=$((failed + f))
}

pkg_status() {
    dpkg-query -W -f='${db:Status-Abbrev}' "$PKG" 2>/dev/null || true
}

apt_noninteractive() {
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 "$@" </dev/null
}

cleanup() {
    local rc=$?
    set +e
    if [[ -n "$vhost" ]]; then
        rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1
    fi
    if [[ -n "$work" && -d "$work/mosquitto" ]]; then
        stop_ws_mosquitto "$work/mosquitto" 2>/dev/null
    fi
    if [[ -n "$installed_by_us" && -n "$(pkg_status)" && "$(pkg_status)" != "un " ]]; then
        log "purging $PKG after an aborted run"
        apt_noninteractive purge "$PKG" >/dev/null 2>&1
    fi
    if [[ -n "$work" && -d "$work" ]]; then
        if [[ -n "${RS_DEB_KEEP:-}" ]]; then
            log "kept $work"
        else
            rm -rf "$work"
        fi
    fi
    printf '%d passed, %d failed\n' "$passed" "$failed"
    if [[ $failed -gt 0 && $rc -eq 0 ]]; then
        rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[[ ${EUID} -eq 0 ]] || die "run as root: this test installs and purges the $PKG package"
work=$(mktemp -d /tmp/restaurant-test-deb.XXXXXX)
# The daemon runs as $SVC_USER and must reach the notify sockets and its state directory in here.
chmod 0711 "$work"

# ---------------------------------------------------------------------------------------------
# Tools and servers

ensure_tools
need_apt python3 adduser util-linux
command -v systemd-analyze >/dev/null 2>&1 || need_apt systemd
ensure_rabbitmq
need_apt mosquitto

case "$(pkg_status)" in
"" | "un ") ;;
*)
    log "$PKG is installed already: purging it first"
    apt_noninteractive purge "$PKG" >/dev/null || die "apt-get purge $PKG failed"
    ;;
esac

# ---------------------------------------------------------------------------------------------
# Build and install

if [[ -n "${RS_DEB:-}" ]]; then
    deb=$(realpath "$RS_DEB") || die "RS_DEB=$RS_DEB: no such file"
    log "testing the given package $deb (RS_DEB), not building one"
else
    log "building the package (cargo deb)"
    if ! cargo deb >"$work/cargo-deb.out" 2>"$work/cargo-deb.err"; then
        tail -n 30 "$work/cargo-deb.err" | sed 's/^/    /'
        fatal "cargo deb builds the package"
    fi
    deb=$(tail -n 1 "$work/cargo-deb.out")
    [[ "$deb" = /* && -f "$deb" ]] || deb="$REPO/$deb"
    [[ -f "$deb" ]] || fatal "cargo deb printed the package path (got '$(tail -n 1 "$work/cargo-deb.out")')"
    pass "cargo deb built $(basename "$deb")"
fi
deb_name_ok() { [[ "$(basename "$deb")" =~ ^restaurant-system_[0-9][^_]*_[a-z0-9]+\.deb$ ]]; }
no_server_depends() { ! dpkg-deb -f "$deb" Depends | grep -Eq 'postgresql|rabbitmq|mosquitto'; }
check "package name is ${PKG}_<version>_<arch>.deb" deb_name_ok
check "package Depends are Debian packages only (no server)" no_server_depends
log "Depends: $(dpkg-deb -f "$deb" Depends); Recommends: $(dpkg-deb -f "$deb" Recommends); Suggests: $(dpkg-deb -f "$deb" Suggests)"

log "apt-get install $deb"
installed_by_us=1
if ! apt_noninteractive install "$deb" >"$work/install.log" 2>&1; then
    tail -n 30 "$work/install.log" | sed 's/^/    /'
    fatal "apt-get install ./${PKG}_*.deb"
fi
pass "apt-get install ./$(basename "$deb")"

# ---------------------------------------------------------------------------------------------
# Files, user, conffile, enablement

dpkg -L "$PKG" >"$work/files.list"
listed_and_present() { grep -qxF "$1" "$work/files.list" && [[ -f "$1" ]]; }
for f in "${EXPECTED_FILES[@]}"; do
    check "installed: $f" listed_and_present "$f"
done
unexpected=$(while IFS= read -r f; do
    [[ -d "$f" ]] && continue
    printf '%s\n' "${EXPECTED_FILES[@]}" | grep -qxF "$f" || echo "$f"
done <"$work/files.list")
check "no other files installed${unexpected:+ (found: ${unexpected//$'\n'/ })}" test -z "$unexpected"

system_user_ok() {
    local uid gid home shell
    IFS=: read -r _ _ uid gid _ home shell < <(getent passwd "$SVC_USER") || { echo "no such user"; return 1; }
    [[ $uid -gt 0 && $uid -lt 1000 ]] || { echo "uid=$uid"; return 1; }
    [[ "$(getent group "$gid" | cut -d: -f1)" == "$SVC_USER" ]] || { echo "primary group $gid"; return 1; }
    [[ "$home" == "$STATE" ]] || { echo "home=$home"; return 1; }
    [[ "$shell" == */nologin || "$shell" == /bin/false ]] || { echo "shell=$shell"; return 1; }
}
# owner_mode PATH USER:GROUP:MODE
owner_mode() {
    local have
    have=$(stat -c %U:%G:%a "$1") || return 1
    echo "$1 is $have"
    [[ "$have" == "$2" ]]
}
is_conffile() { dpkg-query -W -f='${Conffiles}\n' "$PKG" | grep -q "^ $1 [0-9a-f]\{32\}"; }
nothing_enabled() { ! find /etc/systemd/system/restaurant-system.target.wants -mindepth 1 2>/dev/null | grep -q .; }
check "user $SVC_USER: system uid, group $SVC_USER, home $STATE, no login shell" system_user_ok
check "$STATE is $SVC_USER:$SVC_USER mode 750" owner_mode "$STATE" "$SVC_USER:$SVC_USER:750"
check "$CONF is a conffile" is_conffile "$CONF"
check "$CONF is root:$SVC_USER mode 640 (may hold passwords)" owner_mode "$CONF" "root:$SVC_USER:640"
check "restaurant-system.target is enabled (multi-user.target.wants)" \
    test -L /etc/systemd/system/multi-user.target.wants/restaurant-system.target
check "no service enabled or started by the package" nothing_enabled

# as_service_user CMD...: run CMD as the service user, no capabilities, umask 0027 (as the units).
as_service_user() {
    setpriv --reuid="$SVC_USER" --regid="$SVC_USER" --init-groups --inh-caps=-all \
        --bounding-set=-all --no-new-privs -- /bin/sh -c 'umask 0027; exec "$@"' sh "$@"
}
# exit_status_is N CMD...: CMD exits with status N.
exit_status_is() {
    local want=$1 rc=0
    shift
    "$@" || rc=$?
    echo "exit status $rc"
    [[ $rc -eq $want ]]
}

check "'restaurant-system validate' accepts the installed config, as $SVC_USER" \
    as_service_user env -i PATH=/usr/bin:/bin "$BIN" validate --config "$CONF"
printf '[database]\nbackend = "no-such-backend"\n' >"$work/bad.toml"
chmod 644 "$work/bad.toml"
check "a bad config exits with status 2 (units do not restart on it)" exit_status_is 2 \
    as_service_user env -i PATH=/usr/bin:/bin "$BIN" --config "$work/bad.toml" --mode=order-service
check "an unknown mode exits with status 2" exit_status_is 2 \
    as_service_user env -i PATH=/usr/bin:/bin "$BIN" --config "$CONF" --mode=no-such-mode

# The per-worker variables of the kitchen units (EnvironmentFile=, Environment=) are not config
# keys: set or empty, they must not break loading the config. Systemd passes "KEY=" as empty.
check "RESTAURANT_WORKER_ORDER_TYPES=takeout RESTAURANT_WORKER_PREFETCH=2 are accepted" \
    as_service_user env -i PATH=/usr/bin:/bin RESTAURANT_WORKER_ORDER_TYPES=takeout \
    RESTAURANT_WORKER_PREFETCH=2 "$BIN" validate --config "$CONF"
check "empty RESTAURANT_WORKER_ORDER_TYPES= RESTAURANT_WORKER_PREFETCH= mean the defaults" \
    as_service_user env -i PATH=/usr/bin:/bin RESTAURANT_WORKER_ORDER_TYPES= \
    RESTAURANT_WORKER_PREFETCH= "$BIN" validate --config "$CONF"

"$BIN" --help >"$work/help.txt" 2>&1 || true
help_and_man_mention() {
    grep -qF -e "$1" "$work/help.txt" || { echo "not in --help"; return 1; }
    grep -qF -e "$1" "$work/man.txt" || { echo "not in the man page"; return 1; }
}
# The man page's text without roff escapes (works without man-db).
zcat -f /usr/share/man/man1/restaurant-system.1.gz | sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' >"$work/man.txt"
for word in order-service kitchen-worker tracking-service notification-subscriber display-bridge \
    --config --mode --port --max-concurrent --worker-name --order-types --prefetch \
    --heartbeat-interval migrate validate; do
    check "--help and the man page both mention $word" help_and_man_mention "$word"
done

migrate_in_state_dir() {
    as_service_user env -i PATH=/usr/bin:/bin RESTAURANT_DATABASE__BACKEND=sqlite \
        RESTAURANT_DATABASE__SQLITE_PATH="$STATE/restaurant.db" "$BIN" migrate --config "$CONF" || return 1
    owner_mode "$STATE/restaurant.db" "$SVC_USER:$SVC_USER:640"
}
check "migrate as $SVC_USER creates the SQLite database in $STATE (mode 640)" migrate_in_state_dir

# ---------------------------------------------------------------------------------------------
# systemd-analyze verify and security

man_opt=--man=yes
if ! command -v man >/dev/null 2>&1; then
    log "no 'man' here (man-db not installed): verifying without the Documentation= check"
    man_opt=--man=no
fi
# The template is verified through an instance; systemd resolves it from $UNIT_DIR.
instance_unit() {
    if [[ "$1" == *@.service ]]; then echo "${1%@.service}@${WORKER}.service"; else echo "$1"; fi
}
for u in "${UNITS[@]}"; do
    name=$(instance_unit "$u")
    (cd / && systemd-analyze verify "$man_opt" "$name") >"$work/verify.out" 2>"$work/verify.err" || true
    if [[ -s "$work/verify.err" ]]; then
        fail "systemd-analyze verify $name (stderr not empty)"
        sed 's/^/    /' "$work/verify.err"
    else
        pass "systemd-analyze verify $name"
    fi
done
exposures=()
for u in "${UNITS[@]}"; do
    [[ "$u" == *.service ]] || continue
    name=$(instance_unit "$u")
    level=$(systemd-analyze security --offline=true --no-pager "$name" 2>&1 |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\) \(.*\)$/\1 \2/p' | tail -n 1) || true
    exposures+=("$name: ${level:-unknown}")
    check "systemd-analyze security $name: exposure ${level:-unknown} (<= $MAX_EXPOSURE)" \
        awk -v l="${level%% *}" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(l != "" && l + 0 <= m + 0) }'
done

# ---------------------------------------------------------------------------------------------
# Every unit's ExecStart, as systemd would start it

# unit_values UNIT KEY: every value of KEY= in the unit file and the drop-in every
# restaurant-*.service unit gets (restaurant-.service.d/), one per line.
unit_values() {
    sed -n "s/^$2=//p" "$UNIT_DIR/$1" "$UNIT_DIR"/restaurant-.service.d/*.conf
}

# unit_env UNIT: the unit's EnvironmentFile= contents (for the test instance) as KEY=VALUE lines.
unit_env() {
    local file optional
    while IFS= read -r file; do
        optional=""
        if [[ "$file" == -* ]]; then optional=1; file=${file#-}; fi
        file=${file//%i/$WORKER}
        if [[ ! -f "$file" ]]; then
            [[ -n "$optional" ]] || echo "MISSING_ENVIRONMENT_FILE=$file"
            continue
        fi
        sed -e '/^[[:space:]]*[#;]/d' -e '/^[[:space:]]*$/d' \
            -e "s/^\([A-Za-z_][A-Za-z0-9_]*\)=[\"']\(.*\)[\"'][[:space:]]*$/\1=\2/" "$file"
    done < <(unit_values "$1" EnvironmentFile)
}

free_ports() {
    "$PY" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

read -r order_port tracking_port bridge_port mqtt_port mqtt_ws_port < <(free_ports 5)
start_ws_mosquitto "$mqtt_port" "$mqtt_ws_port" "$work/mosquitto" 2>"$work/mosquitto.err" ||
    { cat "$work/mosquitto.err"; fatal "a private Mosquitto for the display bridge"; }

vhost="restaurant-deb-test-$$"
rabbitmqctl -q add_vhost "$vhost" >/dev/null || fatal "rabbitmqctl add_vhost $vhost"
rabbit_user=$(sed -n 's/^user *= *"\(.*\)".*/\1/p' < <(awk '/^\[rabbitmq\]/{f=1;next} /^\[/{f=0} f' "$CONF") | head -n 1)
rabbitmqctl -q set_permissions -p "$vhost" "${rabbit_user:-guest}" '.*' '.*' '.*' >/dev/null ||
    fatal "rabbitmqctl set_permissions -p $vhost ${rabbit_user:-guest}"

install -d -m 0750 -o "$SVC_USER" -g "$SVC_USER" "$work/state"
# A per-worker file as an admin would write it (step 5 of docs/install.md).
printf 'order_types = "takeout,delivery"\nprefetch = 2\n' \
    >"/etc/restaurant-system/kitchen/$WORKER.toml"

IFS=: read -r _ _ _ _ _ svc_home svc_shell < <(getent passwd "$SVC_USER")
base_env=(
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
    HOME="$svc_home" USER="$SVC_USER" LOGNAME="$SVC_USER" SHELL="$svc_shell"
    INVOCATION_ID="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
    STATE_DIRECTORY="$work/state"
    RESTAURANT_DATABASE__BACKEND=sqlite
    RESTAURANT_DATABASE__SQLITE_PATH="$work/state/restaurant.db"
    RESTAURANT_RABBITMQ__HOST=127.0.0.1
    RESTAURANT_RABBITMQ__PORT="${RS_RABBITMQ_PORT:-5672}"
    RESTAURANT_RABBITMQ__VHOST="$vhost"
    RESTAURANT_MQTT__HOST=127.0.0.1
    RESTAURANT_MQTT__PORT="$mqtt_port"
    RESTAURANT_MQTT__CLIENT_ID="restaurant-deb-test-$$"
    RESTAURANT_HTTP__ORDER_PORT="$order_port"
    RESTAURANT_HTTP__TRACKING_PORT="$tracking_port"
    RESTAURANT_HTTP__BRIDGE_PORT="$bridge_port"
)

run_unit() {
    local unit=$1 port=$2 name exec user group env_args=() argv=() line out
    name=$(instance_unit "$unit")
    exec=$(unit_values "$unit" ExecStart | tail -n 1)
    user=$(unit_values "$unit" User | tail -n 1)
    group=$(unit_values "$unit" Group | tail -n 1)
    [[ "$user" == "$SVC_USER" ]] || { fail "$name: User=$user (expected $SVC_USER)"; return; }
    exec=${exec//%i/$WORKER}
    if [[ "$exec" == *%* || "$exec" == *'$'* ]]; then
        fail "$name: ExecStart has specifiers or variables this test does not expand: $exec"
        return
    fi
    read -r -a argv <<<"$exec"
    for line in "${base_env[@]}"; do env_args+=(--env "$line"); done
    while IFS= read -r line; do env_args+=(--env "$line"); done < <(unit_env "$unit")
    out="$work/run-$name.out"
    log "starting $name: $exec"
    "$PY" "$REPO/packaging/sd_notify_check.py" --name "$name" --socket-dir "$work" \
        --user "$user" --group "${group:-$user}" --log "$work/$name.log" \
        ${port:+--health-url "http://127.0.0.1:$port/health"} \
        "${env_args[@]}" -- "${argv[@]}" | tee "$out" || true
    count_results "$out"
}

run_unit restaurant-order.service "$order_port"
run_unit restaurant-tracking.service "$tracking_port"
run_unit restaurant-notifier.service ""
run_unit restaurant-display-bridge.service "$bridge_port"
run_unit restaurant-kitchen@.service ""

stop_ws_mosquitto "$work/mosquitto" 2>/dev/null || true
rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 && vhost=""

# ---------------------------------------------------------------------------------------------
# Upgrade keeps the admin's edits and the state

echo "# edited by packaging/test-deb.sh" >>"$CONF"
uid_before=$(id -u "$SVC_USER")
if apt_noninteractive install --reinstall "$deb" >"$work/upgrade.log" 2>&1; then
    pass "reinstall (upgrade path) of the same package, without questions"
else
    fail "reinstall (upgrade path) of the same package, without questions"
    tail -n 20 "$work/upgrade.log" | sed 's/^/    /'
fi
check "upgrade keeps the edited $CONF" grep -qx "# edited by packaging/test-deb.sh" "$CONF"
same_user_and_state() { [[ "$(id -u "$SVC_USER")" == "$uid_before" && -f "$STATE/restaurant.db" ]]; }
check "upgrade keeps the user and the state" same_user_and_state
check "upgrade keeps $CONF root:$SVC_USER mode 640" owner_mode "$CONF" "root:$SVC_USER:640"

# ---------------------------------------------------------------------------------------------
# remove keeps state; purge leaves nothing

# What an admin does: enable a few units, add a drop-in (systemctl works offline on files).
systemctl enable restaurant-order.service "restaurant-kitchen@$WORKER.service" >"$work/enable.log" 2>&1 ||
    { fail "systemctl enable restaurant-order restaurant-kitchen@$WORKER"; sed 's/^/    /' "$work/enable.log"; }
enabled_under_target() {
    [[ -L /etc/systemd/system/restaurant-system.target.wants/restaurant-order.service &&
        -L "/etc/systemd/system/restaurant-system.target.wants/restaurant-kitchen@$WORKER.service" ]]
}
check "systemctl enable hangs the units under restaurant-system.target" enabled_under_target
mkdir -p /etc/systemd/system/restaurant-kitchen@.service.d
printf '[Service]\nEnvironment=RESTAURANT_WORKER_PREFETCH=2\n' \
    >/etc/systemd/system/restaurant-kitchen@.service.d/override.conf

if apt_noninteractive remove "$PKG" >"$work/remove.log" 2>&1; then
    pass "apt-get remove $PKG"
else
    fail "apt-get remove $PKG"
    tail -n 20 "$work/remove.log" | sed 's/^/    /'
fi
removed_program() { [[ ! -e "$BIN" && ! -e "$UNIT_DIR/restaurant-order.service" ]]; }
kept_state() { [[ -f "$STATE/restaurant.db" && -f "$CONF" ]] && getent passwd "$SVC_USER" >/dev/null; }
check "remove: binary and units are gone" removed_program
check "remove: keeps $STATE, $CONF and user $SVC_USER" kept_state

if apt_noninteractive purge "$PKG" >"$work/purge.log" 2>&1; then
    pass "apt-get purge $PKG"
else
    fail "apt-get purge $PKG"
    tail -n 20 "$work/purge.log" | sed 's/^/    /'
fi
installed_by_us=""
unknown_to_dpkg() { local s; s=$(pkg_status); echo "status '$s'"; [[ -z "$s" || "$s" == "un " ]]; }
check "purge: dpkg no longer knows $PKG" unknown_to_dpkg
left=$(while IFS= read -r f; do
    [[ -d "$f" ]] && continue
    if [[ -e "$f" || -L "$f" ]]; then echo "$f"; fi
done <"$work/files.list")
check "purge: no installed file is left${left:+ (left: ${left//$'\n'/ })}" test -z "$left"
no_config_no_state() { [[ ! -e /etc/restaurant-system && ! -e "$STATE" ]]; }
no_user() { ! getent passwd "$SVC_USER" && ! getent group "$SVC_USER"; }
# nothing_found DIR...: no file named *restaurant* under the directories.
nothing_found() {
    local found
    found=$(find "$@" -name '*restaurant*' 2>/dev/null)
    echo "$found"
    [[ -z "$found" ]]
}
check "purge: /etc/restaurant-system and $STATE are gone" no_config_no_state
check "purge: user and group $SVC_USER are gone" no_user
check "purge: no restaurant* link, mask or drop-in under /etc/systemd/system" nothing_found /etc/systemd/system
check "purge: no deb-systemd-helper state left" nothing_found \
    /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked
check "purge: no /usr/share/doc/restaurant-system" test ! -e /usr/share/doc/restaurant-system

log "systemd-analyze security exposure: ${exposures[*]}"
