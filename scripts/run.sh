#!/usr/bin/env bash
# Run the whole system on this machine (README's run command):
#
#   bash scripts/run.sh [EXTRA FLAGS FOR restaurant-system...]
#
# On the embedded default: SQLite under $STATE_DIR (./var), so PostgreSQL is not needed. Installs
# and starts RabbitMQ and Mosquitto when missing, starts a private Mosquitto with a WebSockets
# listener for the browser kitchen display (port 9001) when nothing listens there yet, configured
# as we ship it for kitchen boxes (packaging/mosquitto: only the display bridge writes, screens
# read with their own account, anonymous clients get nothing; docs/security.md), builds the
# release binary and runs every mode in one process (--mode=all) in the foreground; Ctrl-C stops it.
# The private Mosquitto keeps running for the next start (and keeps the displays' retained state);
# stop it with: kill "$(cat var/mosquitto/mosquitto.pid)"
#
# Environment (optional):
#   STATE_DIR (./var)           SQLite database and the private Mosquitto's files
#   MQTT_WS_PORT (9001)         WebSockets port for kitchen displays
#   DISPLAY_MQTT_PORT (1884)    TCP port of the private Mosquitto (the bridge publishes there)
#   RS_CONFIG (./config.toml)   config file passed with --config when it exists
# Any RESTAURANT_* variable set by the caller wins over the defaults below.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RS_LOG_TAG="run"

STATE_DIR="${STATE_DIR:-./var}"
mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)
MQTT_WS_PORT="${MQTT_WS_PORT:-9001}"
DISPLAY_MQTT_PORT="${DISPLAY_MQTT_PORT:-1884}"
RS_CONFIG="${RS_CONFIG:-config.toml}"

ensure_rabbitmq
ensure_mosquitto

# The browser display speaks MQTT over WebSockets. The display-bridge must publish to the broker
# the browsers connect to, so it uses the private broker's TCP port.
ws_dir="$STATE_DIR/mosquitto"
mqtt_port="${RS_MQTT_PORT:-1883}"
if pid=$(_ws_mosquitto_pid "$ws_dir"); then
    mqtt_port=$(awk '$1 == "listener" { print $2; exit }' "$ws_dir/mosquitto.conf")
    MQTT_WS_PORT=$(awk '$1 == "listener" { p = $2 } $1 == "protocol" && $2 == "websockets" { print p; exit }' "$ws_dir/mosquitto.conf")
    log "reusing the private Mosquitto (pid $pid): mqtt 127.0.0.1:$mqtt_port, websockets :$MQTT_WS_PORT"
elif ! port_open 127.0.0.1 "$MQTT_WS_PORT"; then
    start_secure_mosquitto "$DISPLAY_MQTT_PORT" "$MQTT_WS_PORT" "$ws_dir"
    mqtt_port=$DISPLAY_MQTT_PORT
else
    log "port $MQTT_WS_PORT is already in use: assuming it is the WebSockets listener of the Mosquitto on 127.0.0.1:$mqtt_port"
fi

ensure_cargo
ensure_build_deps
log "cargo build --release"
cargo build --release

export RESTAURANT_DATABASE__BACKEND="${RESTAURANT_DATABASE__BACKEND:-sqlite}"
export RESTAURANT_DATABASE__SQLITE_PATH="${RESTAURANT_DATABASE__SQLITE_PATH:-$STATE_DIR/restaurant.db}"
export RESTAURANT_RABBITMQ__HOST="${RESTAURANT_RABBITMQ__HOST:-127.0.0.1}"
export RESTAURANT_MQTT__HOST="${RESTAURANT_MQTT__HOST:-127.0.0.1}"
export RESTAURANT_MQTT__PORT="${RESTAURANT_MQTT__PORT:-$mqtt_port}"
# The display page connects to the WebSockets port the broker really listens on.
export RESTAURANT_DISPLAY__MQTT_WS_PORT="${RESTAURANT_DISPLAY__MQTT_WS_PORT:-$MQTT_WS_PORT}"
# The private broker's accounts (start_secure_mosquitto): the bridge writes, paired screens read.
if [[ -s "$ws_dir/bridge.password" && -s "$ws_dir/display.password" ]]; then
    export RESTAURANT_MQTT__USER="${RESTAURANT_MQTT__USER:-restaurant-bridge}"
    RESTAURANT_MQTT__PASSWORD="${RESTAURANT_MQTT__PASSWORD:-$(cat "$ws_dir/bridge.password")}"
    export RESTAURANT_MQTT__PASSWORD
    export RESTAURANT_DISPLAY__MQTT_USERNAME="${RESTAURANT_DISPLAY__MQTT_USERNAME:-restaurant-display}"
    RESTAURANT_DISPLAY__MQTT_PASSWORD="${RESTAURANT_DISPLAY__MQTT_PASSWORD:-$(cat "$ws_dir/display.password")}"
    export RESTAURANT_DISPLAY__MQTT_PASSWORD
fi

config_args=()
if [[ -f "$RS_CONFIG" ]]; then
    config_args=(--config "$RS_CONFIG")
fi

cat <<EOF

restaurant-system, every mode in one process (SQLite: $RESTAURANT_DATABASE__SQLITE_PATH)
  order API:       http://localhost:3000   (POST /orders, GET /health)
  tracking API:    http://localhost:3002   (GET /orders/{n}/status, /workers/status)
  kitchen display: http://localhost:3002/display
  pair a display once with a kitchen token (docs/security.md):
    RESTAURANT_DATABASE__BACKEND=sqlite RESTAURANT_DATABASE__SQLITE_PATH=$RESTAURANT_DATABASE__SQLITE_PATH \\
      ${CARGO_TARGET_DIR:-target}/release/restaurant-system ${config_args[*]} token create kds-1 --role kitchen
  MQTT:            127.0.0.1:$RESTAURANT_MQTT__PORT, WebSockets :$MQTT_WS_PORT
Ctrl-C stops it.

EOF
exec "${CARGO_TARGET_DIR:-target}/release/restaurant-system" "${config_args[@]}" --mode=all "$@"
