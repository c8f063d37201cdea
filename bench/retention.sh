#!/usr/bin/env bash
# The retention benchmark (issue 26, item 3; docs/BENCHMARKS.md, "Retention"):
#
#   bash bench/retention.sh                 # one million old orders per backend
#   bash bench/retention.sh --orders 100000 # fewer (flags go to examples/retention.rs)
#
# Per backend (SQLite, then PostgreSQL) on a fresh database: generates the old orders with one SQL
# statement per table, measures the intake's database step at a fixed rate without a purge, then
# while the order service's purge (services::retention) deletes them, and the database's size
# before and after. Prints the figures; asserts nothing about speed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
export RS_LOG_TAG="bench-retention"
export TEST_PG_HOST="${TEST_PG_HOST:-127.0.0.1}"
[[ "$TEST_PG_HOST" == 127.0.0.1 || "$TEST_PG_HOST" == localhost ]] && ensure_postgres

cargo build --release --example retention
for backend in sqlite postgres; do
    target/release/examples/retention --backend "$backend" --dir "${TMPDIR:-/tmp}" "$@"
done
