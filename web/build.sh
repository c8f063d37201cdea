#!/usr/bin/env bash
# Copies the pinned MQTT client (npm package `mqtt`) into web/dist/. The tracking service
# embeds it, with the page's own files from web/src/, and serves them at /display.
# web/dist/ is committed so that `cargo build` needs no npm; run this after changing the pin.
#
#   bash web/build.sh           rebuild web/dist/
#   bash web/build.sh --check   fail if web/dist/ differs from a fresh build
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

command -v npm >/dev/null || { echo "build.sh: npm not found (apt-get install nodejs npm)" >&2; exit 2; }

out="dist"
if [[ "${1:-}" == "--check" ]]; then
  out="$(mktemp -d)"
  trap 'rm -rf "$out"' EXIT
elif [[ $# -gt 0 ]]; then
  echo "usage: build.sh [--check]" >&2
  exit 2
fi

# The MQTT client comes from the npm registry, pinned in package-lock.json.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
src_lib="node_modules/mqtt/dist/mqtt.min.js"
[[ -f "$src_lib" ]] || { echo "build.sh: $src_lib missing after npm ci" >&2; exit 1; }

mkdir -p "$out"
install -m 644 "$src_lib" "$out/mqtt.min.js"

if [[ "$out" != "dist" ]]; then
  if ! diff -r "$out" dist; then
    echo "build.sh --check: web/dist/ is out of date; run bash web/build.sh and commit web/dist/" >&2
    exit 1
  fi
  echo "web/dist/ is up to date"
else
  ls -l dist
fi
