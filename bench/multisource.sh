#!/usr/bin/env bash
# One large layer from one throttled mirror, then from two mirrors throttled to the same
# rate: with two, cudaimg fetches parallel Range chunks from both.
#
#   bench/multisource.sh          # SCALE=0.1 (a 137 MB layer), RATE=20000000 B/s per mirror, RUNS=3
#
# Prints per-run times, medians, the effective rate of each setup and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-0.1}
RATE=${RATE:-20000000}
RUNS=${RUNS:-3}
scripts/setup.sh
cargo build --release --quiet --bin cudaimg --example serve_fixture
CUDAIMG=$PWD/target/release/cudaimg
work=$(mktemp -d /tmp/cudaimg-bench-multi.XXXXXX)
cleanup() {
    # Closing its stdin lets the fixture server stop its registry; a kill would orphan it.
    [ -n "${serve_pid:-}" ] && { exec 3>&- ; wait "$serve_pid" 2>/dev/null; }; rm -rf "$work" 2>/dev/null || true; }
trap cleanup EXIT

mkfifo "$work/in"
target/release/examples/serve_fixture --scale "$SCALE" --proxies 2 --throttle "$RATE" <"$work/in" >"$work/serve.json" &
serve_pid=$!
exec 3>"$work/in"
for _ in $(seq 1200); do [ -s "$work/serve.json" ] && break; sleep 0.5; done
field() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print(eval("v" + sys.argv[2]))' "$work/serve.json" "$1"; }
ref=$(field '["repository_tag"]'); bytes=$(field '["bytes"]'); p1=$(field '["proxies"][0]'); p2=$(field '["proxies"][1]')
printf '[registries."docker.io"]\nendpoint = "%s"\nmirrors = []\n' "$p1" >"$work/one.toml"
printf '[registries."docker.io"]\nendpoint = "%s"\nmirrors = [{ url = "%s" }]\n' "$p1" "$p2" >"$work/two.toml"
echo "image: $ref ($bytes bytes), each mirror throttled to $RATE B/s"

one=() two=()
for i in $(seq "$RUNS"); do
    for setup in one two; do
        rm -rf "$work/store"; sync
        /usr/bin/time -f "%e %M" -o "$work/t" "$CUDAIMG" -q --config "$work/$setup.toml" --store "$work/store" \
            pull --platform linux/amd64 "$ref" >/dev/null
        read -r t rss <"$work/t"
        if [ "$setup" = one ]; then one+=("$t"); else two+=("$t"); fi
        echo "run $i, $setup mirror(s): $t s, peak RSS $((rss / 1024)) MB"
    done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
m1=$(median "${one[@]}"); m2=$(median "${two[@]}")
awk -v b="$bytes" -v a="$m1" -v c="$m2" 'BEGIN {
    printf "median: one mirror %.2f s (%.1f MB/s), two mirrors %.2f s (%.1f MB/s), speed-up %.2fx\n", a, b/a/1e6, c, b/c/1e6, a/c }'
