# shellcheck shell=bash
# packaging/box-lib.sh: a Debian 12 "kitchen box" booted with systemd-nspawn (systemd as PID 1),
# for packaging/test-systemd.sh and packaging/test-multibox.sh. Sourced after scripts/lib.sh.
#
# The box's root file system is built once with debootstrap (minbase, systemd, and the servers a
# kitchen PC runs: RabbitMQ, Mosquitto, PostgreSQL) and cached OUTSIDE the repository, under
# $RS_BOX_CACHE (default /var/cache/restaurant-system-test), keyed by a hash of what goes into
# it: a CI machine builds it once (a few minutes), every later run copies it (seconds).

RS_BOX_CACHE=${RS_BOX_CACHE:-/var/cache/restaurant-system-test}
RS_BOX_SUITE=bookworm
RS_BOX_MIRROR=${RS_BOX_MIRROR:-http://deb.debian.org/debian}
RS_BOX_HOSTNAME=kitchen-box
# debootstrap --include (what makes it boot) and what apt then installs into the tree.
# pg_auto_failover and iproute2 are for the three-box test (packaging/test-multibox.sh); the
# single-box tests never start them.
RS_BOX_BASE=systemd,systemd-sysv,dbus,adduser
RS_BOX_PACKAGES=(rabbitmq-server mosquitto mosquitto-clients postgresql curl jq sqlite3 procps
    ca-certificates postgresql-15-auto-failover pg-auto-failover-cli iproute2)
# Bump when the way the box is made changes (so the cache key changes).
RS_BOX_RECIPE=2

box_cache_key() {
    printf '%s\n' "$RS_BOX_SUITE" "$RS_BOX_MIRROR" "$RS_BOX_BASE" "${RS_BOX_PACKAGES[*]}" \
        "$RS_BOX_RECIPE" | sha256sum | cut -c1-16
}

# box_image: prints the cached root directory, building it first when missing.
box_image() {
    local key dir tmp
    key=$(box_cache_key)
    dir="$RS_BOX_CACHE/box-$key"
    if [[ -f "$dir/.complete" ]]; then
        echo "$dir"
        return 0
    fi
    need_apt debootstrap systemd-container >&2
    install -d -m 0755 "$RS_BOX_CACHE"
    tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    log "building the box image $dir (debootstrap $RS_BOX_SUITE, once per machine; a few minutes)"
    if ! debootstrap --variant=minbase --include="$RS_BOX_BASE" "$RS_BOX_SUITE" "$tmp" \
        "$RS_BOX_MIRROR" >"$tmp.log" 2>&1; then
        tail -n 20 "$tmp.log" >&2
        rm -rf "$tmp"
        die "debootstrap failed (log above)"
    fi
    # What an installer writes: debootstrap leaves no /etc/hosts, and RabbitMQ's node name
    # (rabbit@HOSTNAME) must resolve.
    printf '127.0.0.1 localhost %s\n::1 localhost ip6-localhost\n' "$RS_BOX_HOSTNAME" >"$tmp/etc/hosts"
    echo "$RS_BOX_HOSTNAME" >"$tmp/etc/hostname"
    # The servers go in with the host's network, before the box is ever booted with its own.
    # Nothing starts during the install: systemd is not running in the tree.
    if ! systemd-nspawn --register=no --keep-unit -q -D "$tmp" --hostname="$RS_BOX_HOSTNAME" /bin/sh -c \
        "apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends ${RS_BOX_PACKAGES[*]} && apt-get clean" \
        >>"$tmp.log" 2>&1 </dev/null; then
        tail -n 20 "$tmp.log" >&2
        rm -rf "$tmp"
        die "installing ${RS_BOX_PACKAGES[*]} into the box failed (log above)"
    fi
    # Made next to this machine's PostgreSQL, the cluster got the next free port: the box's
    # own is on the standard one (packaging/test-systemd.sh sets it too, for older images).
    sed -i 's/^port = [0-9]*/port = 5432/' "$tmp"/etc/postgresql/*/main/postgresql.conf
    # No getty on a console nobody reads; a quicker boot.
    ln -sf /dev/null "$tmp/etc/systemd/system/console-getty.service"
    touch "$tmp/.complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    mv "$tmp.log" "$dir.log"
    echo "$dir"
}

# The power-cut VM (packaging/test-powercut.sh): the box image above plus a kernel, booted by
# qemu as a whole machine. Cached next to it, keyed by the box's key and this recipe.
RS_VM_PACKAGES=(linux-image-amd64 initramfs-tools)
RS_VM_RECIPE=3

vm_cache_key() {
    printf '%s\n' "$(box_cache_key)" "${RS_VM_PACKAGES[*]}" "$RS_VM_RECIPE" | sha256sum | cut -c1-16
}

# vm_image: prints the cached VM root directory (kernel and initrd in its /boot), building it
# from box_image first when missing.
vm_image() {
    local key dir tmp box
    key=$(vm_cache_key)
    dir="$RS_BOX_CACHE/vm-$key"
    if [[ -f "$dir/.complete" ]]; then
        echo "$dir"
        return 0
    fi
    box=$(box_image) || return 1
    tmp="$dir.tmp.$$"
    rm -rf "$tmp"
    log "building the VM image $dir from $box (a kernel and its initrd; once per machine)"
    cp -a "$box" "$tmp"
    rm -f "$tmp/.complete"
    # A small initrd: only what mounts a virtio disk's ext4 (Debian builds both as modules).
    # The default (MODULES=most, 36 MB) takes over 10 s to unpack under TCG, at every boot.
    mkdir -p "$tmp/etc/initramfs-tools/conf.d"
    printf 'MODULES=list\nCOMPRESS=gzip\n' >"$tmp/etc/initramfs-tools/conf.d/restaurant-vm.conf"
    printf '%s\n' virtio_pci virtio_blk ext4 >>"$tmp/etc/initramfs-tools/modules"
    if ! systemd-nspawn --register=no --keep-unit -q -D "$tmp" --hostname="$RS_BOX_HOSTNAME" /bin/sh -c \
        "apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends ${RS_VM_PACKAGES[*]} && apt-get clean" \
        >"$tmp.log" 2>&1 </dev/null; then
        tail -n 20 "$tmp.log" >&2
        rm -rf "$tmp"
        die "installing ${RS_VM_PACKAGES[*]} into the VM image failed (log above)"
    fi
    # RabbitMQ's first start, as apt-get install does on a running Debian (its postinst starts
    # the service): the schema, the default vhost and its files exist before the first boot,
    # as on a box installed days before its first power cut. Under TCG that first start takes
    # minutes; every later one is a restart. A network of its own: this machine's RabbitMQ
    # and epmd keep their ports.
    local pid pid1="" i up=""
    systemd-nspawn --register=no --keep-unit -q --private-network -D "$tmp" \
        --hostname="$RS_BOX_HOSTNAME" -b >>"$tmp.log" 2>&1 </dev/null &
    pid=$!
    for ((i = 0; i < 300; i++)); do
        [[ -n "$pid1" ]] || pid1=$(pgrep -P "$pid" -x systemd || true)
        if [[ -n "$pid1" && "$(nsenter -t "$pid1" -a systemctl is-active rabbitmq-server 2>/dev/null)" == active ]]; then
            up=1
            break
        fi
        sleep 1
    done
    # SIGTERM to systemd-nspawn halts the box cleanly: RabbitMQ stops as on a shutdown.
    kill -TERM "$pid"
    wait "$pid" || true
    if [[ -z "$up" ]]; then
        tail -n 20 "$tmp.log" >&2
        rm -rf "$tmp"
        die "RabbitMQ's first start in the VM image failed (log above)"
    fi
    # qemu's user network: the guest is 10.0.2.15, the host 10.0.2.2 (no DHCP wait at boot).
    mkdir -p "$tmp/etc/systemd/network" "$tmp/etc/systemd/system/multi-user.target.wants" \
        "$tmp/etc/systemd/system/sockets.target.wants"
    printf '[Match]\nName=en* eth*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n' \
        >"$tmp/etc/systemd/network/10-qemu.network"
    ln -sf /lib/systemd/system/systemd-networkd.service \
        "$tmp/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    ln -sf /lib/systemd/system/systemd-networkd.socket \
        "$tmp/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"
    printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$tmp/etc/fstab"
    # Nobody logs in on the serial console; no timer's catch-up job competes with the boot
    # being measured (the test's VM has no network beyond its forwarded ports anyway).
    for u in serial-getty@ttyS0.service apt-daily.timer apt-daily-upgrade.timer man-db.timer \
        e2scrub_all.timer fstrim.timer dpkg-db-backup.timer; do
        ln -sf /dev/null "$tmp/etc/systemd/system/$u"
    done
    rm -f "$tmp"/boot/*.dpkg-bak "$tmp"/boot/*.new
    ls "$tmp"/boot/vmlinuz-* "$tmp"/boot/initrd.img-* >/dev/null || die "no kernel or initrd in $tmp/boot"
    touch "$tmp/.complete"
    rm -rf "$dir"
    mv "$tmp" "$dir"
    mv "$tmp.log" "$dir.log"
    echo "$dir"
}

# ---------------------------------------------------------------------------------------------
# Booting a box, running commands in it, cutting its power (shared by the box tests)

BOX_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# box_exec PID CMD...: run CMD as root in the box whose systemd is PID (all its namespaces),
# with a clean environment.
box_exec() {
    local pid=$1
    shift
    nsenter -t "$pid" -a env -i PATH="$BOX_PATH" LANG=C.UTF-8 HOME=/root TERM=dumb \
        SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

# box_start LOG DIR HOSTNAME [NSPAWN OPTION...]: boots DIR with systemd as PID 1 in the
# background (systemd-nspawn -b, output to LOG) and waits until the box's systemd says it is
# running (or degraded). Sets BOX_NSPAWN_PID and BOX_PID1 (the box's systemd); prints the
# system state. Fails when the box did not come up.
box_start() {
    local logf=$1 dir=$2 name=$3 i state=""
    shift 3
    systemd-nspawn --register=no --keep-unit -D "$dir" --hostname="$name" "$@" -b \
        </dev/null >"$logf" 2>&1 &
    BOX_NSPAWN_PID=$!
    BOX_PID1=""
    for ((i = 0; i < 200; i++)); do
        BOX_PID1=$(pgrep -P "$BOX_NSPAWN_PID" -x systemd || true)
        [[ -n "$BOX_PID1" ]] && break
        kill -0 "$BOX_NSPAWN_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z "$BOX_PID1" ]]; then
        tail -n 20 "$logf" >&2
        return 1
    fi
    # The first calls can come before the box's systemd answers on its bus: systemctl then says
    # "offline" (no bus yet) at once, even with --wait, so that is a state to wait out too.
    for ((i = 0; i < 120; i++)); do
        state=$(timeout 120 nsenter -t "$BOX_PID1" -a env -i PATH="$BOX_PATH" systemctl is-system-running --wait 2>/dev/null || true)
        case "$state" in
            "" | initializing | starting | offline) ;;
            *) break ;;
        esac
        sleep 0.5
    done
    echo "system state: $state"
    if [[ "$state" == degraded ]]; then
        box_exec "$BOX_PID1" systemctl --failed --no-legend >&2 || true
    fi
    [[ "$state" == running || "$state" == degraded ]]
}

# wait_gone PID SECONDS
wait_gone() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    return 1
}

# wait_until SECONDS CMD...: polls CMD every 0.5 s.
wait_until() {
    local limit=$1 end
    shift
    end=$(($(date +%s) + limit))
    while ! "$@" >/dev/null 2>&1; do
        [[ $(date +%s) -lt $end ]] || return 1
        sleep 0.5
    done
}

# box_power_cut NSPAWN_PID PID1: SIGKILL to the box's own PID 1 ends every process in it at
# once (SIGKILL to systemd-nspawn would not: the box's processes would run on, orphaned).
box_power_cut() {
    kill -KILL "$2" 2>/dev/null || true
    wait_gone "$1" 30
    wait "$1" 2>/dev/null || true
}

# The check lines of the box tests (test-systemd.sh, test-multibox.sh, test-powercut.sh). The caller sets
# passed=0 failed=0, work (a scratch folder) and SCENARIOS=().
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
        tail -n 25 "$work/check.out" | sed 's/^/    /'
    fi
}
fatal() {
    fail "$*"
    exit 1
}
# scenario NAME TEXT: the one summary line of a scenario (printed now and again at the end).
scenario() {
    local line
    line=$(printf 'SCENARIO %-22s %s' "$1" "$2")
    echo "$line"
    SCENARIOS+=("$line")
}
