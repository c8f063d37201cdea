#!/usr/bin/python3
"""Check docker-compose.yml: the three servers, their ports, and credentials that match config.toml.

Usage: check-compose.py [COMPOSE_FILE] [--config CONFIG_TOML]

Needs PyYAML (Debian: python3-yaml). Prints one line per check; exits 1 when any check fails.
The credential comparison with config.toml is skipped (with a note) when the file does not exist
or does not name the database user, password and database (it runs on SQLite by default); values
in commented-out lines of its [database] section count, since that is where the PostgreSQL
settings are documented.
"""

import argparse
import os
import re
import sys

try:
    import yaml
except ImportError:
    sys.exit("check-compose.py needs PyYAML: apt-get install python3-yaml")

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPECTED = {
    "postgres": {"image": "postgres:15", "ports": [5432]},
    "rabbitmq": {"image": "rabbitmq:3-management", "ports": [5672, 15672]},
    "mosquitto": {"image": "eclipse-mosquitto:2", "ports": [1883, 9001]},
}
MOSQUITTO_CONF_IN_CONTAINER = "/mosquitto/config/mosquitto.conf"


class Checker:
    def __init__(self):
        self.failures = 0

    def check(self, ok, message):
        print(("ok:   " if ok else "FAIL: ") + message)
        if not ok:
            self.failures += 1
        return ok

    @staticmethod
    def note(message):
        print("note: " + message)


def published_container_ports(service):
    """Container ports published by a service, from short ("8080:80", "127.0.0.1:80:80/tcp", 80)
    or long ({target: 80, published: 8080}) syntax."""
    ports = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            target = entry.get("target")
            if target is not None:
                ports.add(int(target))
            continue
        text = str(entry).split("/")[0]
        target = text.rsplit(":", 1)[-1]
        if "-" in target:
            low, high = target.split("-", 1)
            ports.update(range(int(low), int(high) + 1))
        else:
            ports.add(int(target))
    return ports


def environment(service):
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = {}
        for item in env:
            key, _, value = str(item).partition("=")
            pairs[key] = value
        return pairs
    return {str(k): ("" if v is None else str(v)) for k, v in env.items()}


def database_settings(config_path):
    """user/password/database from config.toml's [database] section, falling back to
    commented-out `# key = "value"` lines of that section."""
    with open(config_path, "rb") as f:
        raw = f.read()
    settings = {}
    if tomllib is not None:
        data = tomllib.loads(raw.decode("utf-8"))
        section = data.get("database") or {}
        for key in ("user", "password", "database"):
            if isinstance(section.get(key), str):
                settings[key] = section[key]
    in_section = False
    for line in raw.decode("utf-8").splitlines():
        stripped = line.strip()
        if re.match(r"^\[[^\]]+\]", stripped):
            in_section = stripped.startswith("[database]")
            continue
        if not in_section:
            continue
        m = re.match(r'^#\s*(user|password|database)\s*=\s*"([^"]*)"', stripped)
        if m and m.group(1) not in settings:
            settings[m.group(1)] = m.group(2)
    return settings


def rabbitmq_settings(config_path):
    if tomllib is None:
        return {}
    with open(config_path, "rb") as f:
        data = tomllib.load(f)
    section = data.get("rabbitmq") or {}
    return {k: section[k] for k in ("user", "password") if isinstance(section.get(k), str)}


def check_mosquitto_conf(c, path):
    if not c.check(os.path.isfile(path), f"{os.path.relpath(path, REPO)} exists"):
        return
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line.split())
    listeners = {}
    current = None
    for words in lines:
        if words[0] == "listener" and len(words) >= 2:
            current = int(words[1])
            listeners[current] = "mqtt"
        elif words[0] == "protocol" and current is not None and len(words) >= 2:
            listeners[current] = words[1]
    c.check(listeners.get(1883) == "mqtt", "mosquitto config: listener 1883 (mqtt)")
    c.check(listeners.get(9001) == "websockets", "mosquitto config: listener 9001 protocol websockets")
    c.check(["allow_anonymous", "true"] in lines, "mosquitto config: allow_anonymous true")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compose", nargs="?", default=os.path.join(REPO, "docker-compose.yml"))
    parser.add_argument("--config", default=os.path.join(REPO, "config.toml"))
    args = parser.parse_args()

    c = Checker()
    try:
        with open(args.compose, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        c.check(False, f"{args.compose} parses as YAML: {e}")
        return 1
    c.check(isinstance(doc, dict) and isinstance(doc.get("services"), dict),
            f"{os.path.basename(args.compose)} parses and has a services mapping")
    services = doc.get("services") if isinstance(doc, dict) else None
    if not isinstance(services, dict):
        return 1
    compose_dir = os.path.dirname(os.path.abspath(args.compose))

    for name, want in EXPECTED.items():
        svc = services.get(name)
        if not c.check(isinstance(svc, dict), f"service {name} is defined"):
            continue
        c.check(svc.get("image") == want["image"],
                f"service {name}: image {want['image']} (got {svc.get('image')!r})")
        have = published_container_ports(svc)
        for port in want["ports"]:
            c.check(port in have, f"service {name}: publishes port {port}")
        c.check("healthcheck" in svc, f"service {name}: has a healthcheck")

    pg_env = environment(services.get("postgres") or {})
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"):
        c.check(bool(pg_env.get(key)), f"service postgres: {key} is set")
    mq_env = environment(services.get("rabbitmq") or {})
    for key in ("RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"):
        c.check(bool(mq_env.get(key)), f"service rabbitmq: {key} is set")

    # The mosquitto config mounted into the container.
    mounted = None
    for vol in (services.get("mosquitto") or {}).get("volumes") or []:
        if isinstance(vol, dict):
            source, target = vol.get("source"), vol.get("target")
        else:
            parts = str(vol).split(":")
            source, target = parts[0], parts[1] if len(parts) > 1 else None
        if target == MOSQUITTO_CONF_IN_CONTAINER and source:
            mounted = os.path.normpath(os.path.join(compose_dir, source))
    if c.check(mounted is not None, f"service mosquitto: mounts a config at {MOSQUITTO_CONF_IN_CONTAINER}"):
        check_mosquitto_conf(c, mounted)

    # Credentials against config.toml.
    if not os.path.isfile(args.config):
        c.note(f"{args.config} does not exist (yet); credential comparison skipped")
    else:
        try:
            db = database_settings(args.config)
            mq = rabbitmq_settings(args.config)
        except (OSError, ValueError) as e:
            c.check(False, f"{args.config} parses as TOML: {e}")
            db, mq = {}, {}
        pairs = [("user", "POSTGRES_USER"), ("password", "POSTGRES_PASSWORD"), ("database", "POSTGRES_DB")]
        for key, env_key in pairs:
            if key in db:
                c.check(db[key] == pg_env.get(env_key),
                        f"config.toml [database] {key} = {db[key]!r} matches postgres {env_key} = {pg_env.get(env_key)!r}")
            else:
                c.note(f"config.toml [database] has no {key} (not even commented out); not compared")
        for key, env_key in (("user", "RABBITMQ_DEFAULT_USER"), ("password", "RABBITMQ_DEFAULT_PASS")):
            if key in mq:
                c.check(mq[key] == mq_env.get(env_key),
                        f"config.toml [rabbitmq] {key} = {mq[key]!r} matches rabbitmq {env_key} = {mq_env.get(env_key)!r}")

    print(f"check-compose: {c.failures} problem(s)")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
