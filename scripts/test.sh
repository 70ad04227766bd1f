#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, then the whole workspace's tests against
# real nats-servers (installed here, pinned), a real container engine (podman, installed
# here) and real databases (SQLite; PostgreSQL at
# SLIPWAY_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
./scripts/install-nats-server.sh
./scripts/install-podman.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
