#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use: the CNCF distribution registry
# (`docker-registry`), skopeo (the independent reader of what cudaimg writes), a Docker
# Engine (`docker.io`: the tests start their own dockerd as root), busybox-static (a real
# static binary for an image that `docker run` runs) and docker-compose (`docker-compose
# config` validates the compose files `cudaimg run-config` writes), containerd (its `ctr`
# pulls from `cudaimg serve` through a hosts.toml mirror in the tests), protoc, which the
# build needs, openssl, python3-pip with pypiserver, and podman (Debian 12's 4.3.1: the
# tests start its Docker-API service with storage of their own; as root it needs neither
# uidmap nor slirp4netns, which only rootless podman uses). Then the cached chroot of
# today's engines (Docker 28.5, containerd 2.1, runc 1.3 from Debian testing:
# scripts/engines.sh), which Debian 12 cannot install. Every tool a test uses is here: as
# root or in CI a missing one fails its test, never skips it.
set -euo pipefail
need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
# debootstrap makes the runnable Python base of the `cudaimg build` tests (cached outside
# the clone, in /var/cache/cudaimg-test).
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v ctr >/dev/null 2>&1 || need+=(containerd)
# protoc: containerd-client (cudaimg-containerd's gRPC bindings) generates its Rust code from
# containerd's .proto files at build time.
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v podman >/dev/null 2>&1 || need+=(podman)
# openssl makes the test certificate of `cudaimg serve --tls-cert` and of the hostile-TLS
# test; `script` (bsdutils) runs the progress-bar test under a terminal; python3-pip installs
# pypiserver below. A test that finds one missing fails as root or in CI (never a skip).
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v script >/dev/null 2>&1 || need+=(bsdutils)
command -v python3 >/dev/null 2>&1 || need+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# A static /bin/busybox: ldd says "not a dynamic executable" and exits 1 (so not in a pipeline,
# which pipefail would count as failed whatever grep found).
ldd_busybox="$( [ -x /bin/busybox ] && LC_ALL=C ldd /bin/busybox 2>&1 || true)"
case "$ldd_busybox" in
*"not a dynamic"*) ;;
*) need+=(busybox-static) ;;
esac
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if ((${#need[@]})); then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# pypiserver: the real package index on loopback that the `cudaimg build --pip-index-url`
# test installs through; its `passlib` extra reads the htpasswd file of the test whose index
# wants a password. From PyPI. Debian's Python refuses a system-wide install without
# --break-system-packages (PEP 668), hence the second try. A failure stops the setup: those
# tests fail as root or in CI without it.
if ! command -v pypi-server >/dev/null 2>&1 || ! python3 -c 'import passlib' 2>/dev/null; then
    python3 -m pip install --quiet 'pypiserver[passlib]' 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages 'pypiserver[passlib]'
    hash -r
    if ! command -v pypi-server >/dev/null 2>&1 || ! python3 -c 'import passlib' 2>/dev/null; then
        echo "setup: pypiserver[passlib] did not install (python3 -m pip install 'pypiserver[passlib]')" >&2
        exit 1
    fi
fi
# The engines' chroot (~1 min and ~400 MB the first time; then a no-op). The tests of those
# engines fail as root or in CI without it, so a failure here stops the setup.
$sudo env ${CUDAIMG_TEST_CACHE:+CUDAIMG_TEST_CACHE="$CUDAIMG_TEST_CACHE"} \
    "$(dirname "$0")/engines.sh" >/dev/null
