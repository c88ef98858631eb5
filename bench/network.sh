#!/usr/bin/env bash
# `docker pull` through Docker's own `registry-mirrors` against `cudaimg pull --load`, the
# same image over the same throttled links, alternating in one run, each from a clean start
# (no image in Docker, an empty store). Every mirror is a fault proxy in front of one local
# registry, paced to RATE bytes/s over all its connections together: one mirror is one link.
#
# Scenarios:
#   clean  one mirror;
#   cuts   one mirror that cuts each blob once at half its size (FIN), re-armed every run;
#   two    two mirrors (Docker lists both in registry-mirrors; cudaimg in mirrors.toml).
#
#   bench/network.sh                        # SCALE=0.2 (~300 MB), RATE=25000000, RUNS=3
#   SCENARIOS="clean two" RUNS=5 bench/network.sh
#   ENGINE=current STORE=containerd bench/network.sh
#
# ENGINE: `stable` (Debian 12's Docker 20.10, the default) or `current` (Debian testing's
# 28.5 from the chroot scripts/engines.sh builds); STORE: `graphdriver` (the default) or
# `containerd` (the containerd image store, Docker 29's default). The Engine is started by
# examples/engine.rs (the tests' harness) with the scenario's mirrors in its daemon.json.
#
# The official registry is out of reach for both (no internet): Docker's fallback is
# registry-1.docker.io, cudaimg's endpoint a closed port. Needs root (it starts its own
# dockerd with a private data root) and the packages of scripts/setup.sh. Prints per-run
# times, medians and the ratio docker/cudaimg per scenario.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-0.2}
RATE=${RATE:-25000000}
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-clean cuts two}
scripts/setup.sh >/dev/null
ENGINE=${ENGINE:-stable}
STORE=${STORE:-graphdriver}
cargo build --release --quiet --bin cudaimg --example serve_fixture --example engine
CUDAIMG=$PWD/target/release/cudaimg
work=$(mktemp -d /tmp/cudaimg-bench-network.XXXXXX)
stop_dockerd() {
    if [ -n "${dockerd_pid:-}" ]; then
        # Closing its stdin stops the engine (and unmounts what it mounted).
        exec 4>&-
        wait "$dockerd_pid" 2>/dev/null || true
        dockerd_pid=
    fi
}
cleanup() {
    stop_dockerd
    # Closing its stdin lets the fixture server stop its registry; a kill would orphan it.
    [ -n "${serve_pid:-}" ] && { exec 3>&- ; wait "$serve_pid" 2>/dev/null; }
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

mkfifo "$work/in"
target/release/examples/serve_fixture --scale "$SCALE" --runnable --proxies 2 --cutting \
    --throttle "$RATE" <"$work/in" >"$work/serve.out" &
serve_pid=$!
exec 3>"$work/in"
for _ in $(seq 1200); do [ -s "$work/serve.out" ] && break; sleep 0.5; done
field() { head -n1 "$work/serve.out" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(eval("v" + sys.argv[1]))' "$1"; }
ref=$(field '["repository_tag"]'); bytes=$(field '["bytes"]')
p1=$(field '["proxies"][0]'); p2=$(field '["proxies"][1]'); pc=$(field '["cutting"]')
echo "image: docker.io/$ref ($bytes bytes of layers and config), each mirror paced to $RATE B/s"

# An Engine whose registry-mirrors are the scenario's mirrors (plain HTTP, so insecure).
start_dockerd() {
    stop_dockerd
    local config flags=()
    config=$(python3 -c 'import json,sys; m=sys.argv[1:]; print(json.dumps({"registry-mirrors": m, "insecure-registries": [u.split("://", 1)[1] for u in m]}))' "$@")
    [ "$STORE" = containerd ] && flags+=(--containerd-store)
    rm -f "$work/engine.in" "$work/engine.out"
    mkfifo "$work/engine.in"
    target/release/examples/engine "$ENGINE" "${flags[@]}" --config "$config" \
        <"$work/engine.in" >"$work/engine.out" 2>"$work/engine.err" &
    dockerd_pid=$!
    exec 4>"$work/engine.in"
    for _ in $(seq 600); do [ -s "$work/engine.out" ] && break; sleep 0.2; done
    [ -s "$work/engine.out" ] || { echo "the engine did not start:"; tail "$work/engine.err"; exit 1; }
    DOCKER_HOST=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["host"])' "$work/engine.out")
    export DOCKER_HOST
    echo "engine: $(docker version --format '{{.Server.Version}}') ($(docker info --format '{{.Driver}}'))"
}
mirrors_toml() {
    local list="" m
    for m in "$@"; do list+="${list:+, }{ url = \"$m\" }"; done
    printf '[registries."docker.io"]\nendpoint = "http://127.0.0.1:9"\nmirrors = [%s]\n' "$list" >"$work/mirrors.toml"
}
armed=0
arm() {
    echo arm >&3
    armed=$((armed + 1))
    for _ in $(seq 200); do [ "$(grep -c '^armed' "$work/serve.out")" -ge "$armed" ] && return; sleep 0.05; done
    echo "the cutting proxy did not re-arm"; exit 1
}
clean_docker() {
    docker rmi -f "$ref" >/dev/null 2>&1 || true
    docker image prune -a -f >/dev/null 2>&1 || true
}
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

summary=()
for scenario in $SCENARIOS; do
    case $scenario in
        clean) mirrors=("$p1") ;;
        cuts) mirrors=("$pc") ;;
        two) mirrors=("$p1" "$p2") ;;
        *) echo "unknown scenario $scenario"; exit 2 ;;
    esac
    start_dockerd "${mirrors[@]}"
    mirrors_toml "${mirrors[@]}"
    c_times=() d_times=()
    for i in $(seq "$RUNS"); do
        clean_docker; rm -rf "$work/store"; sync
        [ "$scenario" = cuts ] && arm
        # Its warnings (the official registry is out of reach, the cuts) are expected here.
        /usr/bin/time -f "%e" -o "$work/t" "$CUDAIMG" -q --config "$work/mirrors.toml" \
            --store "$work/store" pull --load "$ref" >/dev/null 2>"$work/cudaimg.err" \
            || { cat "$work/cudaimg.err"; exit 1; }
        c_times+=("$(cat "$work/t")")
        [ "$(docker run --rm --network none "$ref")" = ready ] || { echo "cudaimg: image does not run"; exit 1; }
        clean_docker; sync
        [ "$scenario" = cuts ] && arm
        /usr/bin/time -f "%e" -o "$work/t" docker pull -q "$ref" >/dev/null
        d_times+=("$(cat "$work/t")")
        [ "$(docker run --rm --network none "$ref")" = ready ] || { echo "docker: image does not run"; exit 1; }
        echo "$scenario run $i: cudaimg pull --load ${c_times[-1]} s, docker pull ${d_times[-1]} s"
    done
    mc=$(median "${c_times[@]}"); md=$(median "${d_times[@]}")
    summary+=("$(printf '%-6s docker pull %6.2f s   cudaimg pull --load %6.2f s   docker/cudaimg %.2fx' \
        "$scenario" "$md" "$mc" "$(awk -v a="$md" -v b="$mc" 'BEGIN {print a/b}')")")
done
echo "medians over $RUNS runs ($bytes bytes, $RATE B/s per mirror; ENGINE=$ENGINE STORE=$STORE; load average $(cut -d' ' -f1-3 /proc/loadavg)):"
printf '  %s\n' "${summary[@]}"
