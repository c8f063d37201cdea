"""Helpers for tests/api-fuzz/run.sh (run with the venv's Python; standard library and PyYAML).

  helper.py wait ORDER_URL TRACKING_URL SECONDS
      Wait until both services answer GET /health with 200.
  helper.py served URL FILE
      Check that GET URL/openapi.yaml serves exactly FILE (the binary embeds the document).
  helper.py seed ORDER_URL TRACKING_URL IN_YAML OUT_YAML
      Place real orders, take them through every status, and write a copy of the OpenAPI document
      whose order_number parameter lists them as examples: schemathesis' examples phase then hits
      existing orders (200 and 409 answers), not only unknown numbers (404).
  helper.py summary NAME NDJSON...
      Per operation: test cases, status codes, failed checks. Last line: "CASES PASSED FAILED SERVER_ERRORS".
"""

import collections
import json
import os
import sys
import time
import urllib.error
import urllib.request

import yaml


def request(method, url, body=None, timeout=10):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    req.add_header("X-Request-ID", "api-fuzz-seed")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait(order_url, tracking_url, seconds):
    deadline = time.monotonic() + float(seconds)
    last = ""
    while time.monotonic() < deadline:
        try:
            a, body_a = request("GET", order_url + "/health", timeout=2)
            b, body_b = request("GET", tracking_url + "/health", timeout=2)
            if a == 200 and b == 200:
                return 0
            last = f"order-service {a} {body_a!r}, tracking-service {b} {body_b!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.3)
    print(f"services not healthy within {seconds}s: {last}", file=sys.stderr)
    return 1


def served(url, path):
    status, body = request("GET", url + "/openapi.yaml")
    with open(path, "rb") as f:
        want = f.read()
    if status == 200 and body == want:
        print(f"GET {url}/openapi.yaml serves {path} byte for byte")
        return 0
    print(
        f"GET {url}/openapi.yaml answered {status} with {len(body)} bytes that differ from {path} "
        f"({len(want)} bytes): the binary is older than the document, rebuild it (cargo build)",
        file=sys.stderr,
    )
    return 1


def status_of(tracking_url, number):
    status, body = request("GET", f"{tracking_url}/orders/{number}/status")
    if status != 200:
        raise RuntimeError(f"GET /orders/{number}/status answered {status}: {body!r}")
    return json.loads(body)["current_status"]


def wait_status(tracking_url, number, wanted, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        current = status_of(tracking_url, number)
        if current in wanted:
            return current
        time.sleep(0.1)
    raise RuntimeError(f"order {number} did not reach {wanted} within {seconds}s (is {current})")


def seed(order_url, tracking_url, in_yaml, out_yaml):
    item = {"name": "Margherita Pizza", "quantity": 2, "price": 15.99}
    bodies = [
        {"customer_name": "John Doe", "order_type": "takeout", "items": [item]},
        {"customer_name": "Jane Smith", "order_type": "dine_in", "table_number": 12, "items": [item]},
        {
            "customer_name": "Bob O'Neil",
            "order_type": "delivery",
            "delivery_address": "123 Main Street, Springfield",
            "items": [item],
        },
        {"customer_name": "Zoë Ångström", "order_type": "takeout", "items": [item]},
    ]
    numbers = []
    for body in bodies:
        status, raw = request("POST", order_url + "/orders", body)
        if status != 200:
            raise RuntimeError(f"POST /orders answered {status}: {raw!r}")
        numbers.append(json.loads(raw)["order_number"])
    # The first three cook (0.1 s); the last one is cancelled at once (received or cooking).
    status, raw = request("POST", f"{order_url}/orders/{numbers[3]}/cancel")
    if status not in (200, 409):
        raise RuntimeError(f"cancel answered {status}: {raw!r}")
    for n in numbers[:3]:
        wait_status(tracking_url, n, {"ready"})
    # One completed (bumped) and one recalled, so the examples cover every status.
    for n, action in ((numbers[1], "complete"), (numbers[2], "complete"), (numbers[2], "recall")):
        status, raw = request("POST", f"{order_url}/orders/{n}/{action}")
        if status != 200:
            raise RuntimeError(f"{action} {n} answered {status}: {raw!r}")
    states = {n: status_of(tracking_url, n) for n in numbers}
    with open(in_yaml, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    param = doc["components"]["parameters"]["OrderNumber"]
    param.pop("example", None)
    param["examples"] = {
        f"{state}_{i}": {"summary": f"an existing order ({state})", "value": n}
        for i, (n, state) in enumerate(states.items())
    }
    param["examples"]["unknown"] = {"summary": "no such order", "value": "ORD_20000101_999"}
    with open(out_yaml, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f, allow_unicode=True, sort_keys=False)
    print("seeded orders: " + ", ".join(f"{n} ({s})" for n, s in states.items()))
    return 0


def summary(name, paths):
    cases = passed = failed = server_errors = 0
    per_op = collections.OrderedDict()
    failures = collections.Counter()
    phases = collections.Counter()
    for path in paths:
        if not os.path.exists(path):
            print(f"    no report at {path}")
            continue
        with open(path, encoding="utf-8") as f:
            for line in f:
                event = json.loads(line)
                kind, body = next(iter(event.items()))
                if kind != "ScenarioFinished":
                    continue
                rec = body.get("recorder", {})
                interactions = rec.get("interactions", {})
                checks = rec.get("checks", {})
                for cid, inter in interactions.items():
                    resp = inter.get("response") or {}
                    # The operation's label; the coverage phase files its probes of undocumented
                    # methods (405) under it too. Stateful scenarios are labelled per request.
                    label = rec.get("label", "?")
                    if body.get("phase") == "stateful":
                        case = (rec.get("cases", {}).get(cid) or {}).get("value") or {}
                        label = f"{case.get('method', '?')} {case.get('path', '?')} (stateful)"
                    phases[body.get("phase", "?")] += 1
                    op = per_op.setdefault(label, {"cases": 0, "codes": collections.Counter(), "failed": 0})
                    code = resp.get("status_code")
                    op["cases"] += 1
                    op["codes"][code] += 1
                    cases += 1
                    if isinstance(code, int) and code >= 500:
                        server_errors += 1
                    bad = [c["name"] for c in checks.get(cid, []) if c.get("status") == "failure"]
                    if bad:
                        failed += 1
                        op["failed"] += 1
                        for b in bad:
                            failures[(label, b)] += 1
                    else:
                        passed += 1
    print(f"--- {name}: {cases} test cases, {passed} passed, {failed} failed, {server_errors} 5xx")
    print("    by phase: " + ", ".join(f"{p} {n}" for p, n in phases.items()))
    for label, op in per_op.items():
        codes = " ".join(f"{c}x{n}" for c, n in sorted(op["codes"].items(), key=lambda kv: str(kv[0])))
        print(f"    {label:<52} {op['cases']:>4} cases {op['failed']:>3} failed  {codes}")
    for (label, check), n in sorted(failures.items()):
        print(f"    FAILED {check} on {label}: {n}")
    print(cases, passed, failed, server_errors)
    return 0


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "wait" and len(argv) == 5:
        return wait(*argv[2:])
    if cmd == "served" and len(argv) == 4:
        return served(*argv[2:])
    if cmd == "seed" and len(argv) == 6:
        try:
            return seed(*argv[2:])
        except (RuntimeError, OSError, KeyError, ValueError) as e:
            print(f"seeding failed: {e}", file=sys.stderr)
            return 1
    if cmd == "summary" and len(argv) >= 3:
        return summary(argv[2], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
