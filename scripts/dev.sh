#!/usr/bin/env bash
# Starts a whole Slipway control plane on this machine (`slipway dev`): installs the pinned
# nats-server if needed, builds every service, then runs them against their own nats-server
# on a free port and SQLite in .slipway-dev/. Extra arguments go to `slipway dev`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-nats-server.sh
cargo build --workspace --locked
exec ./target/debug/slipway dev "$@"
