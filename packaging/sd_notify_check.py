#!/usr/bin/env python3
"""Start one daemon command the way systemd starts a Type=notify unit, and check what it says.

Used by packaging/test-deb.sh; runs alone too:

    sd_notify_check.py --name order --socket-dir DIR --user restaurant \
        --env KEY=VALUE ... [--health-url URL] -- /usr/bin/restaurant-system --mode=...

The test owns a unix datagram socket (NOTIFY_SOCKET) and sets WATCHDOG_USEC/WATCHDOG_PID, then
starts the command as --user with a clean environment made of --env only (no root, no
capabilities, no new privileges, umask 0027, as the units do). It checks:

  * READY=1 arrives within --ready-timeout seconds (STATUS= lines before it are shown);
  * the HTTP health URL answers 200 once ready (when given);
  * WATCHDOG=1 keeps arriving: at least --min-watchdogs within --watch-window seconds;
  * SIGHUP (ExecReload) neither kills it nor stops the watchdog pings;
  * SIGTERM brings STOPPING=1 and then exit status 0 within --stop-timeout seconds;
  * every notification came from the main process (the units say NotifyAccess=main).

Each check prints one line, "PASS: ..." or "FAIL: ..."; the exit status is the number of failures.
"""

import argparse
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request


class Notifications:
    """The test's end of NOTIFY_SOCKET: datagrams with the sender's credentials."""

    def __init__(self, path):
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        # The daemon runs as another user: let it send (the directory is searchable).
        os.chmod(path, 0o666)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages = []  # (monotonic time, sender pid, "KEY=VALUE")

    def poll(self, until):
        """Receive until the monotonic time `until`; returns the new assignments."""
        new = []
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return new
            self.sock.settimeout(left)
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(
                    65536, socket.CMSG_SPACE(struct.calcsize("iII"))
                )
            except socket.timeout:
                return new
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", payload[: struct.calcsize("iII")])[0]
            now = time.monotonic()
            for line in data.decode("utf-8", "replace").split("\n"):
                if line:
                    self.messages.append((now, pid, line))
                    new.append(line)
            if new:
                return new

    def wait_for(self, wanted, timeout, on_message=None):
        """Wait until the assignment `wanted` (e.g. "READY=1") arrives; True when it did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.poll(deadline):
                if on_message:
                    on_message(line)
                if line == wanted:
                    return True
        return False

    def count_during(self, wanted, seconds):
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline:
            count += sum(1 for line in self.poll(deadline) if line == wanted)
        return count

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class Checks:
    def __init__(self, name):
        self.name = name
        self.failed = 0

    def result(self, ok, text):
        print(f"{'PASS' if ok else 'FAIL'}: {self.name}: {text}", flush=True)
        if not ok:
            self.failed += 1
        return ok


def health(url, timeout=3.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read(200).decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, str(err)
    except (OSError, urllib.error.URLError) as err:
        return None, str(err)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="label for the check lines")
    parser.add_argument("--socket-dir", required=True, help="directory for the notify socket")
    parser.add_argument("--user", required=True, help="run the command as this user")
    parser.add_argument("--group", help="and this group (default: the user's name)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the command")
    parser.add_argument("--log", help="file for the command's stdout and stderr")
    parser.add_argument("--health-url")
    parser.add_argument("--ready-timeout", type=float, default=5.0)
    parser.add_argument("--watchdog-usec", type=int, default=2_000_000)
    parser.add_argument("--watch-window", type=float, default=3.0)
    parser.add_argument("--min-watchdogs", type=int, default=2)
    parser.add_argument("--stop-timeout", type=float, default=15.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")

    checks = Checks(args.name)
    notes = Notifications(os.path.join(args.socket_dir, f"notify-{args.name}.sock"))
    env = dict(item.split("=", 1) for item in args.env)
    env["NOTIFY_SOCKET"] = notes.path
    env["WATCHDOG_USEC"] = str(args.watchdog_usec)
    # setpriv and sh exec in place, so "$$" is the daemon's PID, as systemd's WATCHDOG_PID is.
    argv = [
        "setpriv", f"--reuid={args.user}", f"--regid={args.group or args.user}", "--init-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
        "/bin/sh", "-c", 'umask 0027; WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh",
    ] + command
    log = open(args.log or os.devnull, "wb")
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    print(f"  {args.name}: started pid {proc.pid}: {' '.join(command)}", flush=True)

    def show_status(line):
        if line.startswith("STATUS="):
            print(f"  {args.name}: {line} (after {time.monotonic() - started:.2f}s)", flush=True)

    try:
        ready = notes.wait_for("READY=1", args.ready_timeout, show_status)
        elapsed = time.monotonic() - started
        if not checks.result(ready and proc.poll() is None,
                             f"READY=1 within {args.ready_timeout:g}s" + (
                                 f" ({elapsed:.2f}s)" if ready else
                                 f" (exit status {proc.poll()})" if proc.poll() is not None else
                                 " (not received)")):
            return finish(checks, notes, proc, args)

        if args.health_url:
            status, body = health(args.health_url)
            checks.result(status == 200, f"GET {args.health_url} -> {status} {body[:80]!r}")

        count = notes.count_during("WATCHDOG=1", args.watch_window)
        checks.result(count >= args.min_watchdogs,
                      f"{count} WATCHDOG=1 in {args.watch_window:g}s with WATCHDOG_USEC="
                      f"{args.watchdog_usec} (need >= {args.min_watchdogs})")

        proc.send_signal(signal.SIGHUP)
        count = notes.count_during("WATCHDOG=1", args.watch_window)
        checks.result(proc.poll() is None and count >= 1,
                      f"SIGHUP (reload): still running, {count} WATCHDOG=1 in {args.watch_window:g}s after it"
                      if proc.poll() is None else f"SIGHUP (reload) ended it with status {proc.poll()}")
        if args.health_url and proc.poll() is None:
            status, body = health(args.health_url)
            checks.result(status == 200, f"GET {args.health_url} after SIGHUP -> {status}")

        stop_sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stopping = notes.wait_for("STOPPING=1", args.stop_timeout)
        checks.result(stopping, "SIGTERM -> STOPPING=1" + (
            f" ({time.monotonic() - stop_sent:.2f}s)" if stopping else " (not received)"))
        try:
            code = proc.wait(max(0.1, stop_sent + args.stop_timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
        checks.result(code == 0, f"exit status {code} after SIGTERM ({time.monotonic() - stop_sent:.2f}s)"
                      if code is not None else f"still running {args.stop_timeout:g}s after SIGTERM")
        return finish(checks, notes, proc, args)
    except BaseException:
        finish(checks, notes, proc, args)
        raise


def finish(checks, notes, proc, args):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    senders = {pid for _t, pid, _line in notes.messages}
    if notes.messages:
        checks.result(senders == {proc.pid},
                      f"{len(notes.messages)} notifications, all from the main pid {proc.pid}"
                      if senders == {proc.pid} else f"notifications from pids {sorted(senders)}, main pid {proc.pid}")
    notes.close()
    if checks.failed and args.log:
        print(f"  {args.name}: last lines of {args.log}:", flush=True)
        with open(args.log, "rb") as log:
            for line in log.read().decode("utf-8", "replace").splitlines()[-25:]:
                print(f"    {line}", flush=True)
    return checks.failed


if __name__ == "__main__":
    sys.exit(min(main(), 100))
