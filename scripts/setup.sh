#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use: the CNCF distribution registry
# (`docker-registry`), skopeo (the independent reader of what cudaimg writes), a Docker
# Engine (`docker.io`: the tests start their own dockerd as root), busybox-static (a real
# static binary for an image that `docker run` runs) and docker-compose (`docker-compose
# config` validates the compose files `cudaimg run-config` writes), and containerd (its `ctr`
# pulls from `cudaimg serve` through a hosts.toml mirror in the tests).
set -euo pipefail
need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v ctr >/dev/null 2>&1 || need+=(containerd)
[ -x /bin/busybox ] && file_is_static=$(LC_ALL=C ldd /bin/busybox 2>&1 | grep -c 'not a dynamic') || file_is_static=0
[ "$file_is_static" -ge 1 ] || need+=(busybox-static)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
