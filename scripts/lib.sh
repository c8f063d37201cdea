# shellcheck shell=bash
# Shared helpers for the scripts in scripts/ (and for other test and packaging scripts).
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#
# Every ensure_* function is idempotent: it installs a missing Debian package and starts a server
# that is not answering, and does nothing when the server already runs. They work without systemd
# as PID 1 (CI machines, containers) and need root (or password-less sudo) only when something
# must be installed or started.
#
# Knobs (environment, all optional):
#   RS_PG_PORT (5432)  RS_RABBITMQ_PORT (5672)  RS_MQTT_PORT (1883)
#   RS_MOSQUITTO_CONF (/etc/mosquitto/mosquitto.conf)
#   RS_WAIT_SECONDS (60): how long to wait for a server to come up
#   RS_APT_STAMP: a file; when set and non-empty, `apt-get update` already ran (scripts/test.sh
#                 sets it so its stages update the package lists at most once)

# Guard against double sourcing.
if [[ -n "${_RS_LIB_SOURCED:-}" ]]; then
    return 0
fi
_RS_LIB_SOURCED=1

# Server binaries (mosquitto, rabbitmq-server) live in /usr/sbin, which a non-root PATH may lack.
case ":$PATH:" in
*:/usr/sbin:*) ;;
*) PATH="$PATH:/usr/sbin:/sbin" ;;
esac

RS_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RS_WAIT_SECONDS="${RS_WAIT_SECONDS:-60}"

# ---------------------------------------------------------------------------------------------
# Messages

# log MESSAGE...: a timestamped line on stderr.
log() {
    printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "${RS_LOG_TAG:-restaurant}" "$*" >&2
}

# die MESSAGE...: log the message as an error and exit 1.
die() {
    printf '%s [%s] ERROR: %s\n' "$(date +%H:%M:%S)" "${RS_LOG_TAG:-restaurant}" "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Small utilities

# as_root CMD...: run CMD as root (directly, or through password-less sudo).
as_root() {
    if [[ ${EUID} -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "this step needs root: run as root or allow password-less sudo (command: $*)"
    fi
}

# port_open HOST PORT: true when something accepts TCP connections on HOST:PORT.
port_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_port HOST PORT NAME HINT: wait up to RS_WAIT_SECONDS for HOST:PORT to accept connections;
# on timeout, die naming the server (NAME) and how to start it by hand (HINT).
wait_port() {
    local host=$1 port=$2 name=$3 hint=$4 i
    for ((i = 0; i < RS_WAIT_SECONDS * 2; i++)); do
        if port_open "$host" "$port"; then
            return 0
        fi
        sleep 0.5
    done
    die "$name did not accept connections on $host:$port within ${RS_WAIT_SECONDS}s. Start it by hand: $hint"
}

# pkg_installed PKG: true when the Debian package PKG is installed.
pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

# need_apt PKG...: install the packages that are missing (apt-get update first, once).
need_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "missing packages ${missing[*]} and no apt-get here: install them by hand"
    if [[ -z "${_RS_APT_UPDATED:-}" ]] && ! [[ -n "${RS_APT_STAMP:-}" && -s "${RS_APT_STAMP}" ]]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update ||
            die "apt-get update failed"
        _RS_APT_UPDATED=1
        if [[ -n "${RS_APT_STAMP:-}" ]]; then
            date >"${RS_APT_STAMP}" || true
        fi
    fi
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
        install --no-install-recommends "${missing[@]}" </dev/null ||
        die "apt-get install ${missing[*]} failed"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL

# ensure_postgres: PostgreSQL installed, running, and accepting user postgres without a password
# over TCP on 127.0.0.1:RS_PG_PORT (what the integration tests use).
ensure_postgres() {
    local port=${RS_PG_PORT:-5432} ver="" cluster="" hba
    if ! pkg_installed postgresql || ! command -v pg_lsclusters >/dev/null 2>&1; then
        need_apt postgresql
    fi
    if ! pg_isready -q -h 127.0.0.1 -p "$port"; then
        # The cluster configured for this port (newest version first).
        read -r ver cluster < <(pg_lsclusters --no-header 2>/dev/null |
            awk -v p="$port" '$3 == p { print $1, $2 }' | sort -rV | head -n 1) || true
        if [[ -z "${ver:-}" ]]; then
            if [[ -n "$(pg_lsclusters --no-header 2>/dev/null)" ]]; then
                die "no PostgreSQL cluster is configured for port $port (see pg_lsclusters); set RS_PG_PORT or create one: pg_createcluster -p $port VERSION main"
            fi
            # The package creates a cluster on install; make one if somebody dropped it.
            ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
            [[ -n "$ver" ]] || die "PostgreSQL is installed but no server version is under /usr/lib/postgresql"
            cluster=main
            log "creating PostgreSQL cluster $ver/$cluster"
            as_root pg_createcluster "$ver" "$cluster" -p "$port"
        fi
        log "starting PostgreSQL $ver/$cluster"
        as_root pg_ctlcluster --skip-systemctl-redirect "$ver" "$cluster" start ||
            log "pg_ctlcluster start returned an error; waiting for the server anyway"
        local i
        for ((i = 0; i < RS_WAIT_SECONDS * 2; i++)); do
            pg_isready -q -h 127.0.0.1 -p "$port" && break
            sleep 0.5
        done
        pg_isready -q -h 127.0.0.1 -p "$port" ||
            die "PostgreSQL did not become ready on 127.0.0.1:$port within ${RS_WAIT_SECONDS}s (log: /var/log/postgresql/postgresql-$ver-$cluster.log). Start it by hand: pg_ctlcluster --skip-systemctl-redirect $ver $cluster start"
        log "PostgreSQL $ver/$cluster is up on 127.0.0.1:$port"
    fi
    if ! _pg_tcp_login "$port"; then
        # A fresh Debian cluster asks for a password (scram) on TCP. The tests log in as postgres
        # without one, so trust local TCP connections: acceptable on a CI or developer machine,
        # never do this on a shared server.
        hba=$(as_root su postgres -s /bin/sh -c "cd / && psql -p $port -XAtc 'SHOW hba_file'") ||
            die "cannot ask PostgreSQL for its pg_hba.conf (su postgres -c psql failed)"
        log "PostgreSQL refuses password-less TCP logins; trusting 127.0.0.1 in $hba"
        as_root sed -i "1i # Added by restaurant-system scripts/lib.sh (ensure_postgres) for tests:\\
host all all 127.0.0.1/32 trust" "$hba"
        as_root su postgres -s /bin/sh -c "cd / && psql -p $port -XAtc 'SELECT pg_reload_conf()'" >/dev/null
        local i
        for ((i = 0; i < 20; i++)); do
            _pg_tcp_login "$port" && break
            sleep 0.25
        done
        _pg_tcp_login "$port" ||
            die "PostgreSQL still refuses 'psql -h 127.0.0.1 -p $port -U postgres' without a password; check $hba"
    fi
}

_pg_tcp_login() {
    PGPASSWORD='' PGCONNECT_TIMEOUT=5 psql -w -X -q -h 127.0.0.1 -p "$1" -U postgres -d postgres \
        -Atc 'SELECT 1' >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------------
# RabbitMQ

# ensure_rabbitmq: RabbitMQ installed and accepting AMQP on 127.0.0.1:RS_RABBITMQ_PORT.
ensure_rabbitmq() {
    local port=${RS_RABBITMQ_PORT:-5672} host
    pkg_installed rabbitmq-server || need_apt rabbitmq-server
    if port_open 127.0.0.1 "$port"; then
        return 0
    fi
    # The node is rabbit@<hostname> unless rabbitmq-env.conf says otherwise; the name must resolve.
    host=$(hostname)
    if ! getent hosts "$host" >/dev/null 2>&1; then
        log "hostname $host does not resolve; adding it to /etc/hosts for RabbitMQ's node name"
        printf '127.0.0.1 %s\n' "$host" | as_root tee -a /etc/hosts >/dev/null
    fi
    if as_root timeout 20 rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
        # The Erlang node runs but the application is stopped (rabbitmqctl stop_app).
        log "RabbitMQ node is up with the application stopped: rabbitmqctl start_app"
        as_root rabbitmqctl -q start_app || die "rabbitmqctl start_app failed"
    else
        log "starting RabbitMQ (rabbitmq-server -detached)"
        as_root rabbitmq-server -detached ||
            log "rabbitmq-server -detached returned an error; waiting for the port anyway"
    fi
    wait_port 127.0.0.1 "$port" RabbitMQ \
        "rabbitmq-server -detached (log: /var/log/rabbitmq/); then rabbitmqctl await_startup"
    as_root timeout "$RS_WAIT_SECONDS" rabbitmqctl -q await_startup ||
        die "RabbitMQ opened port $port but 'rabbitmqctl await_startup' failed; see /var/log/rabbitmq/"
    log "RabbitMQ is up on 127.0.0.1:$port"
}

# ---------------------------------------------------------------------------------------------
# Mosquitto

# ensure_mosquitto: Mosquitto (and its clients) installed, with an anonymous listener on
# 127.0.0.1:RS_MQTT_PORT, running.
ensure_mosquitto() {
    local port=${RS_MQTT_PORT:-1883} conf=${RS_MOSQUITTO_CONF:-/etc/mosquitto/mosquitto.conf}
    need_apt mosquitto mosquitto-clients
    if port_open 127.0.0.1 "$port"; then
        return 0
    fi
    [[ -f "$conf" ]] || die "Mosquitto config $conf is missing (reinstall: apt-get install --reinstall mosquitto)"
    _mosquitto_configure "$conf" "$port"
    # The Debian config writes its pid file under /run/mosquitto, which only the systemd unit
    # creates; without it `mosquitto -d` exits silently.
    if getent passwd mosquitto >/dev/null 2>&1; then
        as_root install -d -m 740 -o mosquitto /run/mosquitto /var/log/mosquitto
    fi
    log "starting Mosquitto (mosquitto -d -c $conf)"
    as_root mosquitto -d -c "$conf" || die "mosquitto -d -c $conf failed; run 'mosquitto -v -c $conf' to see why"
    local logfile
    logfile=$(awk '$1 == "log_dest" && $2 == "file" { print $3 }' "$conf" | tail -n 1)
    if ! (wait_port 127.0.0.1 "$port" Mosquitto "mosquitto -v -c $conf (in the foreground, to see errors)"); then
        if [[ -n "$logfile" && -r "$logfile" ]]; then
            log "last lines of $logfile:"
            tail -n 20 "$logfile" >&2
        fi
        die "Mosquitto is not listening on 127.0.0.1:$port"
    fi
    log "Mosquitto is up on 127.0.0.1:$port"
}

# _mosquitto_configure CONF PORT: make sure CONF (with its include_dir files) has a listener on
# PORT and allows anonymous clients; Mosquitto 2.0 has neither by default.
_mosquitto_configure() {
    local conf=$1 port=$2 incdir files=()
    incdir=$(awk '$1 == "include_dir" { print $2 }' "$conf" | tail -n 1)
    files=("$conf")
    if [[ -n "$incdir" && -d "$incdir" ]]; then
        while IFS= read -r -d '' f; do files+=("$f"); done < <(find "$incdir" -maxdepth 1 -name '*.conf' -print0)
    fi
    local want=()
    grep -qE "^[[:space:]]*listener[[:space:]]+${port}([[:space:]]|$)" "${files[@]}" ||
        want+=("listener ${port} 127.0.0.1")
    grep -qE '^[[:space:]]*allow_anonymous[[:space:]]+true' "${files[@]}" ||
        want+=("allow_anonymous true")
    if [[ ${#want[@]} -eq 0 ]]; then
        return 0
    fi
    if [[ -z "$incdir" ]]; then
        incdir="$(dirname "$conf")/conf.d"
        log "adding 'include_dir $incdir' to $conf"
        printf '\ninclude_dir %s\n' "$incdir" | as_root tee -a "$conf" >/dev/null
    fi
    as_root install -d -m 755 "$incdir"
    log "writing $incdir/restaurant-system.conf (${want[*]})"
    {
        echo "# Written by restaurant-system scripts/lib.sh (ensure_mosquitto)."
        printf '%s\n' "${want[@]}"
    } | as_root tee "$incdir/restaurant-system.conf" >/dev/null
}

# start_ws_mosquitto PORT WSPORT DIR: a private Mosquitto with an anonymous TCP listener on
# 127.0.0.1:PORT and a WebSockets listener on WSPORT (all interfaces: Mosquitto 2.0.11 ignores the
# bind address of a websockets listener), for browser kitchen displays. Config, log and pid file
# live in DIR; stop it with stop_ws_mosquitto DIR. Does nothing when DIR's broker already runs.
start_ws_mosquitto() {
    local port=$1 wsport=$2 dir=$3 pid
    [[ $# -eq 3 ]] || die "usage: start_ws_mosquitto PORT WSPORT DIR"
    need_apt mosquitto
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if pid=$(_ws_mosquitto_pid "$dir"); then
        log "private Mosquitto already runs (pid $pid, $dir)"
        return 0
    fi
    port_open 127.0.0.1 "$port" && die "port $port is already in use; pick another for start_ws_mosquitto"
    port_open 127.0.0.1 "$wsport" && die "port $wsport is already in use; pick another for start_ws_mosquitto"
    # Run as root, mosquitto drops to the user "mosquitto": that user must write the log file.
    if [[ ${EUID} -eq 0 ]] && getent passwd mosquitto >/dev/null 2>&1; then
        chown mosquitto "$dir"
    fi
    cat >"$dir/mosquitto.conf" <<EOF
# Private Mosquitto for browser kitchen displays, written by scripts/lib.sh (start_ws_mosquitto).
pid_file $dir/mosquitto.pid
persistence false
log_dest file $dir/mosquitto.log
log_timestamp_format %Y-%m-%dT%H:%M:%S
allow_anonymous true
# A screen that (re)connects gets every retained order: the default queue of 1000 per client
# would drop the rest of a busy board (see docs/mqtt.md).
max_queued_messages 10000

listener $port 127.0.0.1

listener $wsport
protocol websockets
EOF
    rm -f "$dir/mosquitto.pid"
    log "starting private Mosquitto: mqtt 127.0.0.1:$port, websockets :$wsport ($dir)"
    mosquitto -d -c "$dir/mosquitto.conf" || die "mosquitto -d -c $dir/mosquitto.conf failed"
    if ! (wait_port 127.0.0.1 "$wsport" "private Mosquitto" "mosquitto -v -c $dir/mosquitto.conf"); then
        tail -n 20 "$dir/mosquitto.log" >&2 2>/dev/null || true
        die "private Mosquitto did not start; see $dir/mosquitto.log"
    fi
    wait_port 127.0.0.1 "$port" "private Mosquitto" "mosquitto -v -c $dir/mosquitto.conf"
}

# start_secure_mosquitto PORT WSPORT DIR: like start_ws_mosquitto, but with the broker config we
# ship for kitchen boxes (packaging/mosquitto/restaurant.conf + restaurant.acl, issue 11): only
# the account restaurant-bridge may write restaurant/#, restaurant-display may read, anonymous
# clients get nothing. The passwords are made once and kept in DIR/bridge.password and
# DIR/display.password (mode 600). Does nothing when DIR's broker already runs.
start_secure_mosquitto() {
    local port=$1 wsport=$2 dir=$3 pid root user
    [[ $# -eq 3 ]] || die "usage: start_secure_mosquitto PORT WSPORT DIR"
    need_apt mosquitto
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    if pid=$(_ws_mosquitto_pid "$dir"); then
        log "private Mosquitto already runs (pid $pid, $dir)"
        return 0
    fi
    port_open 127.0.0.1 "$port" && die "port $port is already in use; pick another for start_secure_mosquitto"
    port_open 127.0.0.1 "$wsport" && die "port $wsport is already in use; pick another for start_secure_mosquitto"
    if [[ ${EUID} -eq 0 ]] && getent passwd mosquitto >/dev/null 2>&1; then
        chown mosquitto "$dir"
    fi
    for user in bridge display; do
        if [[ ! -s "$dir/$user.password" ]]; then
            (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$dir/$user.password")
        fi
    done
    rm -f "$dir/restaurant.passwd"
    mosquitto_passwd -b -c "$dir/restaurant.passwd" restaurant-bridge "$(cat "$dir/bridge.password")"
    mosquitto_passwd -b "$dir/restaurant.passwd" restaurant-display "$(cat "$dir/display.password")"
    cp "$root/packaging/mosquitto/restaurant.acl" "$dir/restaurant.acl"
    if [[ ${EUID} -eq 0 ]] && getent passwd mosquitto >/dev/null 2>&1; then
        chown mosquitto "$dir/restaurant.passwd" "$dir/restaurant.acl"
    fi
    {
        echo "# Private Mosquitto written by scripts/lib.sh (start_secure_mosquitto) from"
        echo "# packaging/mosquitto/restaurant.conf, with this directory's files and ports."
        echo "pid_file $dir/mosquitto.pid"
        echo "persistence false"
        echo "log_dest file $dir/mosquitto.log"
        sed -e "s|^password_file .*|password_file $dir/restaurant.passwd|" \
            -e "s|^acl_file .*|acl_file $dir/restaurant.acl|" \
            -e "s|^listener 1883 127.0.0.1\$|listener $port 127.0.0.1|" \
            -e "s|^listener 9001\$|listener $wsport|" \
            "$root/packaging/mosquitto/restaurant.conf"
    } >"$dir/mosquitto.conf"
    rm -f "$dir/mosquitto.pid"
    log "starting private Mosquitto with the shipped ACL: mqtt 127.0.0.1:$port, websockets :$wsport ($dir)"
    mosquitto -d -c "$dir/mosquitto.conf" || die "mosquitto -d -c $dir/mosquitto.conf failed"
    if ! (wait_port 127.0.0.1 "$wsport" "private Mosquitto" "mosquitto -v -c $dir/mosquitto.conf"); then
        tail -n 20 "$dir/mosquitto.log" >&2 2>/dev/null || true
        die "private Mosquitto did not start; see $dir/mosquitto.log"
    fi
    wait_port 127.0.0.1 "$port" "private Mosquitto" "mosquitto -v -c $dir/mosquitto.conf"
}

# stop_ws_mosquitto DIR: stop the private Mosquitto started by start_ws_mosquitto DIR.
stop_ws_mosquitto() {
    local dir=$1 pid i
    if pid=$(_ws_mosquitto_pid "$dir"); then
        kill "$pid"
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        log "stopped private Mosquitto (pid $pid)"
    fi
    rm -f "$dir/mosquitto.pid"
}

# Prints the pid of DIR's private Mosquitto when it runs.
_ws_mosquitto_pid() {
    local dir=$1 pid
    [[ -s "$dir/mosquitto.pid" ]] || return 1
    pid=$(<"$dir/mosquitto.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == mosquitto ]] || return 1
    echo "$pid"
}

# ---------------------------------------------------------------------------------------------
# Build and test tools

# ensure_cargo: a Rust toolchain new enough for Cargo.toml's rust-version.
ensure_cargo() {
    local want have
    command -v cargo >/dev/null 2>&1 ||
        die "cargo not found: install Rust with rustup (Debian's rustc is too old) and put ~/.cargo/bin on PATH"
    want=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' "$RS_REPO_ROOT/Cargo.toml" | head -n 1)
    have=$(rustc --version | awk '{ print $2 }')
    if [[ -n "$want" ]] && [[ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n 1)" != "$want" ]]; then
        die "rustc $have is older than the rust-version $want in Cargo.toml: run 'rustup update stable'"
    fi
}

# ensure_rust_components: rustfmt and clippy (added through rustup when missing).
ensure_rust_components() {
    ensure_cargo
    local comp
    for comp in fmt clippy; do
        if ! cargo "$comp" --version >/dev/null 2>&1; then
            command -v rustup >/dev/null 2>&1 || die "cargo $comp is missing and rustup is not installed"
            log "rustup component add ${comp/fmt/rustfmt}"
            rustup component add "${comp/fmt/rustfmt}" </dev/null || die "rustup component add ${comp/fmt/rustfmt} failed"
        fi
    done
}

# ensure_build_deps: what building the crate needs besides Rust (C compiler for bundled SQLite).
ensure_build_deps() {
    need_apt build-essential pkg-config
}

# ensure_tools: cargo-deb (for packaging).
ensure_tools() {
    ensure_cargo
    if ! cargo deb --version >/dev/null 2>&1; then
        log "installing cargo-deb (cargo install --locked cargo-deb, about a minute)"
        cargo install --locked cargo-deb </dev/null || die "cargo install --locked cargo-deb failed"
    fi
}

# ensure_chromium: a headless browser for the display page tests, at /usr/bin/chromium.
ensure_chromium() {
    if [[ ! -x /usr/bin/chromium ]]; then
        need_apt chromium
    fi
}

# ensure_python_venv DIR PKG...: a virtualenv at DIR (Debian's python3, PEP 668 forbids system
# pip installs) with the given pip requirements installed; skipped when DIR already has them.
ensure_python_venv() {
    local dir=$1
    shift
    need_apt python3 python3-venv
    if [[ ! -x "$dir/bin/python" ]]; then
        log "creating Python venv $dir"
        /usr/bin/python3 -m venv "$dir" || die "python3 -m venv $dir failed"
    fi
    if [[ $# -gt 0 ]] && [[ "$(cat "$dir/.rs-requirements" 2>/dev/null)" != "$*" ]]; then
        log "pip install $* (into $dir)"
        "$dir/bin/pip" install --quiet --disable-pip-version-check "$@" </dev/null ||
            die "pip install $* failed"
        printf '%s' "$*" >"$dir/.rs-requirements"
    fi
}
