#!/usr/bin/env bash
# A verified pull into a local store: `cudaimg pull` against `skopeo copy docker://… oci:…`,
# from the same loopback registry, alternating, destinations cleared between runs.
#
#   bench/pull.sh              # SCALE=1 (the 12.4.1 runtime's real layer sizes, ~1.5 GB), RUNS=5
#   SCALE=0.2 RUNS=3 bench/pull.sh
#
# Prints per-run wall time, peak RSS and CPU seconds, then medians, the ratio
# skopeo/cudaimg, and CPU seconds per GB. Needs the packages of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-1}
RUNS=${RUNS:-5}
scripts/setup.sh
cargo build --release --quiet --bin cudaimg --example serve_fixture
CUDAIMG=$PWD/target/release/cudaimg
work=$(mktemp -d /tmp/cudaimg-bench-pull.XXXXXX)
cleanup() {
    # Closing its stdin lets the fixture server stop its registry; a kill would orphan it.
    [ -n "${serve_pid:-}" ] && { exec 3>&- ; wait "$serve_pid" 2>/dev/null; }
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

mkfifo "$work/in"
target/release/examples/serve_fixture --scale "$SCALE" <"$work/in" >"$work/serve.json" &
serve_pid=$!
exec 3>"$work/in"
for _ in $(seq 1200); do [ -s "$work/serve.json" ] && break; sleep 0.5; done
ref=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["reference"])' "$work/serve.json")
bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' "$work/serve.json")
echo "image: $ref, linux/amd64: $bytes bytes of layers and config"

measure() { # label, command...: appends "wall rss cpu" to $work/$label
    local label=$1; shift
    /usr/bin/time -f "%e %M %U %S" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err"; exit 1; }
    awk '{printf "%s %s %.2f\n", $1, $2, $3 + $4}' "$work/t" >>"$work/$label"
    tail -1 "$work/$label"
}
for i in $(seq "$RUNS"); do
    rm -rf "$work/store" "$work/oci"; sync
    c=$(measure cudaimg "$CUDAIMG" -q --store "$work/store" pull --platform linux/amd64 "$ref")
    rm -rf "$work/store" "$work/oci"; sync
    s=$(measure skopeo skopeo copy -q --src-tls-verify=false --override-arch amd64 "docker://$ref" "oci:$work/oci:x")
    echo "run $i: cudaimg [wall s, peak RSS KB, CPU s] $c | skopeo $s"
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
col() { awk -v c="$2" '{print $c}' "$work/$1" | median; }
cw=$(col cudaimg 1); sw=$(col skopeo 1); cr=$(col cudaimg 2); sr=$(col skopeo 2); cc=$(col cudaimg 3); sc=$(col skopeo 3)
gb=$(awk -v b="$bytes" 'BEGIN {print b / 1e9}')
echo "median wall: cudaimg $cw s, skopeo $sw s, ratio skopeo/cudaimg $(awk -v a="$sw" -v b="$cw" 'BEGIN {printf "%.2f", a/b}')"
echo "median peak RSS: cudaimg $((cr / 1024)) MB, skopeo $((sr / 1024)) MB"
echo "median CPU per GB: cudaimg $(awk -v c="$cc" -v g="$gb" 'BEGIN {printf "%.2f", c/g}') s, skopeo $(awk -v c="$sc" -v g="$gb" 'BEGIN {printf "%.2f", c/g}') s"
