#!/usr/bin/python3
"""The client side of packaging/test-powercut.sh (issue 21), on the host, through qemu's
forwarded ports on 127.0.0.1 only. Standard library only.

  first-accept ORDER_PORT TOKEN SINCE LIMIT OUT   POST orders until one is answered 200; prints
                                                  the seconds since SINCE (epoch), appends the
                                                  order number to OUT
  load ORDER_PORT TOKEN RATE SECONDS OUT          POST at about RATE orders/s for at most SECONDS
                                                  (or until killed); appends each number
                                                  answered 200 to OUT, one a line, at once
  wait-ready TRACK_PORT TOKEN NUMBERS LIMIT       polls each order's status until all are ready
                                                  (or completed) or LIMIT s pass; then reads each
                                                  one's history: prints one JSON line with
                                                  accepted, present, ready, missing, duplicated,
                                                  seconds; exit 0 only when all are ready and
                                                  none duplicated
  amqp-up AMQP_PORT SINCE LIMIT                   waits until RabbitMQ answers an AMQP 0-9-1
                                                  protocol header (connection.start); prints
                                                  the seconds since SINCE, or "timeout"
"""
import json
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request

ORDERS = [
    {"customer_name": "John Doe", "order_type": "takeout",
     "items": [{"name": "Margherita Pizza", "quantity": 2, "price": 15.99},
               {"name": "Caesar Salad", "quantity": 1, "price": 8.99}]},
    {"customer_name": "Jane Smith", "order_type": "dine_in", "table_number": 12,
     "items": [{"name": "Steak", "quantity": 1, "price": 29.99}]},
    {"customer_name": "Bob Johnson", "order_type": "delivery",
     "delivery_address": "123 Main Street, Apt 4B",
     "items": [{"name": "Burger Combo", "quantity": 2, "price": 18.99}]},
]


# A new install serves HTTPS with the box's own CA and refuses a token sent over plain HTTP
# from another host (issue 27); qemu's forwarded ports are another host to the guest. The CA is
# fetched once over plain HTTP (GET /ca.crt is public) and then trusted for 127.0.0.1, which the
# box's certificate names (every address of the box, loopback included).
TLS = {}


def https(port):
    """The SSL context for the box behind PORT, or None while it does not answer."""
    if port not in TLS:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ca.crt", timeout=5) as r:
                TLS[port] = ssl.create_default_context(cadata=r.read().decode())
        except (OSError, ValueError, ssl.SSLError):
            return None
    return TLS[port]


def call(method, url, token, body=None, timeout=10):
    """(status, parsed JSON or None); status 0 when no answer came. URL: http://127.0.0.1:PORT/...,
    sent over HTTPS."""
    port = int(url.split(":")[2].split("/")[0])
    ctx = https(port)
    if ctx is None:
        return 0, None
    url = url.replace("http://", "https://", 1)
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Bearer " + token)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except (OSError, ValueError):
        return 0, None


def post_order(port, token, i):
    code, body = call("POST", f"http://127.0.0.1:{port}/orders", token, ORDERS[i % 3])
    if code == 200 and isinstance(body, dict) and body.get("order_number"):
        return str(body["order_number"])
    return None


def first_accept(port, token, since, limit, out):
    end = time.time() + float(limit)
    i = 0
    while time.time() < end:
        n = post_order(port, token, i)
        i += 1
        if n:
            with open(out, "a") as f:
                f.write(n + "\n")
            print(f"{time.time() - float(since):.1f}")
            return 0
        time.sleep(0.5)
    print("timeout")
    return 1


def load(port, token, rate, seconds, out):
    rate, seconds = float(rate), float(seconds)
    end = time.time() + seconds
    lock = threading.Lock()
    f = open(out, "a")
    threads = 8
    gap = threads / rate

    def run(k):
        i = k
        nxt = time.time()
        while time.time() < end:
            n = post_order(port, token, i)
            i += threads
            if n:
                with lock:
                    f.write(n + "\n")
                    f.flush()
            nxt += gap
            time.sleep(max(0.0, nxt - time.time()))

    ts = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    f.close()
    return 0


def wait_ready(port, token, numbers_file, limit):
    with open(numbers_file) as f:
        numbers = [l.strip() for l in f if l.strip()]
    base = f"http://127.0.0.1:{port}/orders/"
    start = time.time()
    pending = set(numbers)
    present = set()
    while pending and time.time() - start < float(limit):
        for n in sorted(pending):
            code, body = call("GET", base + n + "/status", token)
            if code == 200:
                present.add(n)
                if isinstance(body, dict) and body.get("current_status") in ("ready", "completed"):
                    pending.discard(n)
        if pending:
            time.sleep(2)
    secs = time.time() - start
    duplicated = []
    for n in numbers:
        code, body = call("GET", base + n + "/history", token)
        if code == 200:
            present.add(n)
            entries = body if isinstance(body, list) else (body or {}).get("history", [])
            statuses = [e.get("status") for e in entries if isinstance(e, dict)]
            if statuses.count("ready") > 1 or statuses.count("cooking") > 1:
                duplicated.append(n)
    res = {
        "accepted": len(numbers),
        "distinct": len(set(numbers)),
        "present": len(present),
        "ready": len(numbers) - len(pending),
        "missing": sorted(set(numbers) - present)[:10],
        "duplicated": duplicated[:10],
        "seconds": round(secs, 1),
    }
    print(json.dumps(res))
    ok = not pending and not duplicated and len(set(numbers)) == len(numbers)
    return 0 if ok else 1


def amqp_up(port, since, limit):
    # The broker's own answer, not just an open port: qemu's forwarder accepts a connection
    # before anything in the guest listens.
    end = time.time() + float(limit)
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", int(port)), timeout=3) as s:
                s.settimeout(5)
                s.sendall(b"AMQP\x00\x00\x09\x01")
                frame = s.recv(8)
                if frame[:1] == b"\x01":  # a METHOD frame: connection.start
                    print(f"{time.time() - float(since):.1f}")
                    return 0
        except OSError:
            pass
        time.sleep(1)
    print("timeout")
    return 1


def main(argv):
    cmds = {
        "first-accept": (first_accept, 5),
        "load": (load, 5),
        "wait-ready": (wait_ready, 4),
        "amqp-up": (amqp_up, 3),
    }
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    return cmds[argv[1]][0](*argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
