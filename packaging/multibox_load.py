#!/usr/bin/python3
"""The POS side of packaging/test-multibox.sh (issue 25): terminals posting orders to three
boxes on the test's own bridge. Standard library only.

  load BOXES TOKEN RATE SECONDS OUT STOPFILE
      POST about RATE orders/s for at most SECONDS (or until STOPFILE exists). Each order has an
      Idempotency-Key and a home box (the terminals are spread over BOXES, comma-separated
      addresses); when the box does not answer or answers 5xx, the same order with the same key
      is sent to the next box, and so on, for at most 120 s. Appends one JSON line per order to
      OUT: key, sent, answered, code, number, box, attempts. Prints a summary line at the end.
  gaps OUT CUT...
      For each CUT (epoch seconds): the longest time without an accepted order (a 200) from
      the cut to 120 s after it. Prints "CUT GAP" per cut.

HTTPS with each box's own CA (fetched once from http://BOX:3000/ca.crt, which is public): a new
install refuses a token over plain HTTP from another host.
"""
import concurrent.futures
import json
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from powercut_load import ORDERS  # noqa: E402  (the seed's three orders)

PORT = 3000
RETRY_FOR = 120.0
ATTEMPT_TIMEOUT = 5.0
TLS = {}
TLS_LOCK = threading.Lock()


def tls(box):
    """The SSL context trusting BOX's CA, or None while the box does not answer."""
    with TLS_LOCK:
        if box in TLS:
            return TLS[box]
    try:
        with urllib.request.urlopen(f"http://{box}:{PORT}/ca.crt", timeout=ATTEMPT_TIMEOUT) as r:
            ctx = ssl.create_default_context(cadata=r.read().decode())
    except (OSError, ValueError, ssl.SSLError):
        return None
    with TLS_LOCK:
        TLS[box] = ctx
    return ctx


def post(box, token, key, body):
    """(status, order number or None); status 0 when no answer came."""
    ctx = tls(box)
    if ctx is None:
        return 0, None
    req = urllib.request.Request(f"https://{box}:{PORT}/orders", data=json.dumps(body).encode(),
                                 method="POST")
    req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", "application/json")
    req.add_header("Idempotency-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=ATTEMPT_TIMEOUT, context=ctx) as r:
            data = json.loads(r.read() or b"null")
            n = data.get("order_number") if isinstance(data, dict) else None
            return r.status, (str(n) if n else None)
    except urllib.error.HTTPError as e:
        return e.code, None
    except (OSError, ValueError):
        return 0, None


def one_order(boxes, token, run, k, out, lock):
    key = f"{run}-{k}"
    body = dict(ORDERS[k % len(ORDERS)])
    body["customer_name"] = f"POS {key}"
    sent = time.time()
    attempts, code, number, box = 0, 0, None, None
    i = k % len(boxes)
    while time.time() - sent < RETRY_FOR:
        box = boxes[i % len(boxes)]
        attempts += 1
        code, number = post(box, token, key, body)
        # 200: taken. 4xx other than 408/429: this order is refused for good (no retry helps).
        if code == 200 or (400 <= code < 500 and code not in (408, 429)):
            break
        i += 1
        time.sleep(0.5)
    rec = {"key": key, "sent": round(sent, 3), "answered": round(time.time(), 3), "code": code,
           "number": number, "box": box, "attempts": attempts}
    with lock:
        out.write(json.dumps(rec) + "\n")
        out.flush()
    return rec


def load(boxes, token, rate, seconds, out_path, stopfile):
    boxes = boxes.split(",")
    rate, seconds = float(rate), float(seconds)
    run = "mb%x" % int(time.time())
    lock = threading.Lock()
    start = time.time()
    futures = []
    with open(out_path, "a") as out, \
            concurrent.futures.ThreadPoolExecutor(max_workers=int(rate * RETRY_FOR / 4) + 8) as pool:
        k = 0
        while time.time() - start < seconds and not os.path.exists(stopfile):
            futures.append(pool.submit(one_order, boxes, token, run, k, out, lock))
            k += 1
            time.sleep(max(0.0, start + k / rate - time.time()))
        recs = [f.result() for f in futures]
    ok = [r for r in recs if r["code"] == 200]
    print(json.dumps({"sent": len(recs), "accepted": len(ok),
                      "distinct_numbers": len({r["number"] for r in ok}),
                      "retried": sum(1 for r in ok if r["attempts"] > 1),
                      "refused": sum(1 for r in recs if r["code"] != 200),
                      "seconds": round(time.time() - start, 1)}))
    return 0


def gaps(out_path, *cuts):
    with open(out_path) as f:
        times = sorted(r["answered"] for r in map(json.loads, f) if r["code"] == 200)
    for cut in map(float, cuts):
        window = [cut] + [t for t in times if cut < t <= cut + 120]
        longest = max((b - a for a, b in zip(window, window[1:])), default=120.0)
        print(f"{cut:.0f} {longest:.1f}")
    return 0


def main(argv):
    if len(argv) >= 2 and argv[1] == "load" and len(argv) == 8:
        return load(*argv[2:])
    if len(argv) >= 3 and argv[1] == "gaps":
        return gaps(*argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
