#!/usr/bin/env bash
# Installs what the container tests need, from Debian's packages, idempotently: podman (it
# serves the Docker Engine API the region agent speaks), runc (crun fails here with "cgroups
# in hybrid mode"), a static busybox (the test images are built FROM scratch around it) and
# docker-registry (built images are pushed to one).
# The tests start their own `podman system service` on a socket of their own (testkit podman).
set -euo pipefail

missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
# A registry to push built images to (the CNCF distribution registry).
command -v docker-registry >/dev/null || missing+=(docker-registry)
# busybox-static's binary runs in an empty image; Debian's plain busybox is dynamic.
if ! [[ -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
    missing+=(busybox-static)
fi
if ((${#missing[@]} == 0)); then
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
else
    sudo=()
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y "${missing[@]}" >/dev/null; then
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" apt-get install -y "${missing[@]}" >/dev/null
fi
echo "installed ${missing[*]}: $(podman --version)" >&2
