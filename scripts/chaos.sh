#!/usr/bin/env bash
# Many more seeded fault runs than CI makes: faults planted at leased points, and random
# SIGKILLs and SIGSTOPs (longer than the lease TTL), of two orchestrators under concurrent
# deploys, rollbacks and promotes, on SQLite
# and on PostgreSQL (SLIPWAY_TEST_POSTGRES_URL); the invariant checker after every run. Each
# run prints its faults and what the orchestrators did about them; every process's full log
# is kept in target/chaos.log (under CARGO_TARGET_DIR if set) for a run that breaks an invariant.
#
#   ./scripts/chaos.sh [first-seed] [runs] [operations-per-run]     (defaults: 100 20 20)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-nats-server.sh
first=${1:-100}
runs=${2:-20}
ops=${3:-20}
seeds=$(seq -s, "$first" $((first + runs - 1)))
# The test starts every service's binary: `cargo test -p` alone builds none of them.
cargo build --locked --workspace --bins
SLIPWAY_CHAOS_SEEDS=$seeds SLIPWAY_CHAOS_PG_SEEDS=$seeds SLIPWAY_CHAOS_OPS=$ops \
  cargo test --locked -p deploy-orchestrator --test chaos -- --nocapture --test-threads 1 2>&1 |
  tee "${CARGO_TARGET_DIR:-target}/chaos.log" |
  grep --line-buffered -E '^chaos |panicked|invariants violated|^  proj_|^test |test result'
