#!/usr/bin/env bash
# What the benchmarks compare against, beyond the tests' needs: nginx (Debian's package) for
# the edge benchmark. Not needed by the tests or CI.
set -euo pipefail
if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nginx
