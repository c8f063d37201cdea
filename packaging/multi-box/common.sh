# shellcheck shell=bash
# shellcheck disable=SC2034 # read by the scripts that source this file
# /usr/share/restaurant-system/multi-box/common.sh: what every join script reads
# (docs/multi-box.md). Not run by itself.

MB_DIR=${RS_MULTIBOX_DIR:-/etc/restaurant-system/multi-box}
MB_CONF=$MB_DIR/cluster.conf
MB_SECRETS=$MB_DIR/secrets.env
PG_VERSION=15
PG_BIN=/usr/lib/postgresql/$PG_VERSION/bin
# pg_auto_failover's PostgreSQL (monitor or node) lives here, beside Debian's own clusters.
PGDATA_AF=/var/lib/postgresql/$PG_VERSION/autofailover
PG_PORT=5432
PG_UNIT=pgautofailover.service

say() { printf '%s: %s\n' "${0##*/}" "$*"; }
die() {
    printf '%s: error: %s\n' "${0##*/}" "$*" >&2
    exit 1
}

# load_cluster: reads cluster.conf; sets THIS (this box's name) and checks it is one of BOXES.
load_cluster() {
    [[ ${EUID} -eq 0 ]] || die "run as root"
    [[ -r $MB_CONF ]] || die "$MB_CONF is missing: write it from /usr/share/restaurant-system/multi-box/cluster.conf.example, the same on every box"
    # shellcheck source=/dev/null
    source "$MB_CONF"
    [[ -n ${BOXES:-} && -n ${PG_MONITOR:-} && -n ${PG_NODES:-} && -n ${LAN:-} ]] ||
        die "$MB_CONF must set BOXES, PG_MONITOR, PG_NODES and LAN"
    THIS=${RS_MULTIBOX_THIS:-$(hostname -s)}
    box_addr "$THIS" >/dev/null || die "this box ($THIS, from hostname -s) is not in BOXES of $MB_CONF"
}

# load_secrets: reads secrets.env (made once by make-secrets, copied to every box).
load_secrets() {
    [[ -r $MB_SECRETS ]] || die "$MB_SECRETS is missing: run make-secrets on the first box and copy the file to the others (scp, mode 0600)"
    # shellcheck source=/dev/null
    source "$MB_SECRETS"
    [[ -n ${ERLANG_COOKIE:-} && -n ${PG_AUTOCTL_PASSWORD:-} && -n ${PG_REPLICATION_PASSWORD:-} && -n ${DB_PASSWORD:-} ]] ||
        die "$MB_SECRETS must set ERLANG_COOKIE, PG_AUTOCTL_PASSWORD, PG_REPLICATION_PASSWORD and DB_PASSWORD"
}

# box_names: every box's name, one a line, in the order of BOXES.
box_names() {
    local b
    for b in $BOXES; do echo "${b%%=*}"; done
}

# box_addr NAME: the box's address.
box_addr() {
    local b
    for b in $BOXES; do
        [[ ${b%%=*} == "$1" ]] && { echo "${b#*=}"; return 0; }
    done
    return 1
}

# ensure_hosts: every box's name in /etc/hosts with its LAN address (and this box's name on no
# loopback line: the others must reach what it announces, e.g. pg_auto_failover's node address).
ensure_hosts() {
    local name addr tmp
    tmp=$(mktemp)
    awk -v names="$(box_names | tr '\n' ' ')" '
        BEGIN { n = split(names, a, " "); for (i = 1; i <= n; i++) skip[a[i]] = 1 }
        /^[[:space:]]*#/ || NF < 2 { print; next }
        { line = $1; for (i = 2; i <= NF; i++) if (!($i in skip)) line = line " " $i
          if (line != $1) print line }' /etc/hosts >"$tmp"
    for name in $(box_names); do
        addr=$(box_addr "$name")
        printf '%s %s\n' "$addr" "$name" >>"$tmp"
    done
    if ! cmp -s "$tmp" /etc/hosts; then
        cat "$tmp" >/etc/hosts
        say "/etc/hosts: every box's name and address written"
    fi
    rm -f "$tmp"
}

# as_postgres CMD...: CMD as the postgres user, from a directory it may read.
as_postgres() { (cd / && runuser -u postgres -- "$@"); }

# monitor_uri: pg_auto_failover's monitor, as the nodes connect to it.
monitor_uri() {
    printf 'postgres://autoctl_node:%s@%s:%s/pg_auto_failover?sslmode=require' \
        "$PG_AUTOCTL_PASSWORD" "$PG_MONITOR" "$PG_PORT"
}

# wait_for SECONDS WHAT CMD...: polls CMD every second; dies naming WHAT when it never succeeds.
wait_for() {
    local limit=$1 what=$2 end
    shift 2
    end=$(($(date +%s) + limit))
    until "$@" >/dev/null 2>&1; do
        [[ $(date +%s) -lt $end ]] || die "$what: not within ${limit} s"
        sleep 1
    done
}
