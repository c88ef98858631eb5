#!/usr/bin/env bash
# Time until a runnable image is in Docker: `cudaimg pull --load` against `docker pull`,
# from the same loopback registry, alternating, each from a clean start.
#
#   bench/load.sh            # SCALE=0.2 (a ~300 MB runtime image), RUNS=5
#   SCALE=1 RUNS=3 bench/load.sh
#   ENGINE=current STORE=containerd bench/load.sh
#
# ENGINE: `stable` (Debian 12's Docker 20.10, the default) or `current` (Debian testing's
# 28.5 from scripts/engines.sh's chroot); STORE: `graphdriver` (the default) or `containerd`.
#
# Needs root (it starts its own dockerd with a private data root) and the packages of
# scripts/setup.sh. Prints per-run times, medians, and peak RSS of cudaimg.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-0.2}
RUNS=${RUNS:-5}
scripts/setup.sh
ENGINE=${ENGINE:-stable}
STORE=${STORE:-graphdriver}
cargo build --release --quiet --bin cudaimg --example serve_fixture --example engine
CUDAIMG=$PWD/target/release/cudaimg
work=$(mktemp -d /tmp/cudaimg-bench-load.XXXXXX)
cleanup() {
    # Closing its stdin stops the engine (and unmounts what it mounted).
    [ -n "${dockerd_pid:-}" ] && { exec 4>&- ; wait "$dockerd_pid" 2>/dev/null; }
    # Closing its stdin lets the fixture server stop its registry; a kill would orphan it.
    [ -n "${serve_pid:-}" ] && { exec 3>&- ; wait "$serve_pid" 2>/dev/null; }
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

flags=()
[ "$STORE" = containerd ] && flags+=(--containerd-store)
mkfifo "$work/engine.in"
target/release/examples/engine "$ENGINE" "${flags[@]}" <"$work/engine.in" >"$work/engine.out" 2>"$work/engine.err" &
dockerd_pid=$!
exec 4>"$work/engine.in"
for _ in $(seq 600); do [ -s "$work/engine.out" ] && break; sleep 0.2; done
[ -s "$work/engine.out" ] || { echo "the engine did not start:"; tail "$work/engine.err"; exit 1; }
DOCKER_HOST=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["host"])' "$work/engine.out")
export DOCKER_HOST
echo "engine: $(docker version --format '{{.Server.Version}}') ($(docker info --format '{{.Driver}}'))"

mkfifo "$work/in"
# Without the engine's stdin (fd 4): a child holding it would keep the engine from stopping.
target/release/examples/serve_fixture --scale "$SCALE" --runnable <"$work/in" >"$work/serve.json" 4>&- &
serve_pid=$!
exec 3>"$work/in"
for _ in $(seq 600); do [ -s "$work/serve.json" ] && break; sleep 0.5; done
ref=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["reference"])' "$work/serve.json")
bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' "$work/serve.json")
echo "image: $ref ($bytes bytes of layers and config)"

clean_docker() {
    docker rmi -f "$ref" >/dev/null 2>&1 || true
    docker image prune -a -f >/dev/null 2>&1 || true
}

c_times=() d_times=() c_rss=()
for i in $(seq "$RUNS"); do
    clean_docker; rm -rf "$work/store"; sync
    /usr/bin/time -f "%e %M" -o "$work/t" "$CUDAIMG" -q --store "$work/store" pull --load "$ref" >/dev/null
    read -r t rss <"$work/t"
    [ "$(docker run --rm --network none "$ref")" = ready ] || { echo "cudaimg: image does not run"; exit 1; }
    c_times+=("$t"); c_rss+=("$rss")
    clean_docker; sync
    /usr/bin/time -f "%e %M" -o "$work/t" docker pull -q "$ref" >/dev/null
    read -r t _ <"$work/t"
    [ "$(docker run --rm --network none "$ref")" = ready ] || { echo "docker: image does not run"; exit 1; }
    d_times+=("$t")
    echo "run $i: cudaimg pull --load ${c_times[-1]} s (peak RSS ${c_rss[-1]} KB), docker pull $t s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mc=$(median "${c_times[@]}"); md=$(median "${d_times[@]}"); mr=$(median "${c_rss[@]}")
echo "ENGINE=$ENGINE STORE=$STORE, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "median: cudaimg pull --load $mc s, docker pull $md s (ratio docker/cudaimg $(awk -v a="$md" -v b="$mc" 'BEGIN {printf "%.2f", a/b}')); cudaimg peak RSS median $mr KB"
