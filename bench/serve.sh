#!/usr/bin/env bash
# Serving one image to parallel clients: `cudaimg serve` (from a store filled by `cudaimg pull`)
# against Debian's `docker-registry` (CNCF distribution 2.8) holding the same image.
#
#   bench/serve.sh                 # SCALE=0.2 (~300 MB of amd64 layers), RUNS=3, CLIENTS="1 4 16"
#   SCALE=1 RUNS=5 bench/serve.sh
#
# Each client is one curl that fetches the amd64 manifest, config and every layer over one
# keep-alive connection, to /dev/null. For each server and client count: the median wall
# time over RUNS, the throughput (clients x image bytes / wall) and the server's peak RSS
# (VmHWM, reset before each count). Runs alternate between the servers; the machine is
# noisy, so read the medians. Needs the packages of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-0.2}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-"1 4 16"}
scripts/setup.sh
cargo build --release --quiet --bin cudaimg --example serve_fixture
CUDAIMG=$PWD/target/release/cudaimg
work=$(mktemp -d /tmp/cudaimg-bench-serve.XXXXXX)
cleanup() {
    [ -n "${cudaimg_pid:-}" ] && { kill "$cudaimg_pid" 2>/dev/null; wait "$cudaimg_pid" 2>/dev/null; }
    # Closing its stdin lets the fixture server stop its registry; a kill would orphan it.
    [ -n "${serve_pid:-}" ] && { exec 3>&- ; wait "$serve_pid" 2>/dev/null; }
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

mkfifo "$work/in"
target/release/examples/serve_fixture --scale "$SCALE" <"$work/in" >"$work/fixture.json" &
serve_pid=$!
exec 3>"$work/in"
for _ in $(seq 1200); do [ -s "$work/fixture.json" ] && break; sleep 0.5; done
j() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
ref=$(j "$work/fixture.json" reference)
registry=$(j "$work/fixture.json" registry)
repo_tag=$(j "$work/fixture.json" repository_tag)
registry_pid=$(pgrep -P "$serve_pid" -x docker-registry | head -1)
echo "image: $ref"

"$CUDAIMG" -q --store "$work/store" pull --platform linux/amd64 "$ref" >/dev/null
"$CUDAIMG" --json --store "$work/store" serve --addr 127.0.0.1:0 >"$work/serve.json" 2>"$work/serve.log" &
cudaimg_pid=$!
for _ in $(seq 100); do [ -s "$work/serve.json" ] && break; sleep 0.1; done
cudaimg_url=http://$(j "$work/serve.json" addr)

# The URLs one client fetches: the amd64 manifest, its config and layers (same digests on
# both servers; cudaimg serve names the repository with its registry host).
repo=${repo_tag%%:*}; tag=${repo_tag#*:}
host=${ref%%/*}
python3 - "$registry" "$repo" "$tag" >"$work/paths" <<'EOF'
import json, sys, urllib.request
base, repo, tag = sys.argv[1:]
accept = ", ".join(["application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json"])
def get(ref):
    r = urllib.request.urlopen(urllib.request.Request(f"{base}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}))
    return json.load(r)
m = get(tag)
if "manifests" in m:
    d = next(e["digest"] for e in m["manifests"] if e["platform"]["architecture"] == "amd64")
    print(f"manifests/{d}")
    m = get(d)
print(f"blobs/{m['config']['digest']}")
for l in m["layers"]:
    print(f"blobs/{l['digest']}")
EOF
bytes=$(python3 - "$registry" "$repo" "$work/paths" <<'EOF'
import sys, urllib.request
base, repo, paths = sys.argv[1:]
total = 0
for p in open(paths).read().split():
    if p.startswith("blobs/"):
        r = urllib.request.urlopen(urllib.request.Request(f"{base}/v2/{repo}/{p}", method="HEAD"))
        total += int(r.headers["Content-Length"])
print(total)
EOF
)
echo "one client fetches $(wc -l <"$work/paths") objects, $bytes bytes"

# One client: every object over one connection.
client() { # base-url, repository
    local args=()
    while read -r p; do args+=(-o /dev/null "$1/v2/$2/$p"); done <"$work/paths"
    curl -sf -H "Accept: application/vnd.docker.distribution.manifest.v2+json" "${args[@]}"
}
round() { # server-url repository clients: prints wall seconds
    local start end
    start=$(date +%s.%N)
    local pids=()
    for _ in $(seq "$3"); do client "$1" "$2" & pids+=($!); done
    # Only the clients: a bare `wait` would wait for the servers too.
    wait "${pids[@]}"
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN {printf "%.3f\n", b - a}'
}
reset_peak() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || true; }
peak_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

printf "%-8s %-16s %10s %12s %14s\n" clients server "wall s" "MB/s" "peak RSS MB"
for n in $CLIENTS; do
    rm -f "$work"/wall.*
    reset_peak "$registry_pid"; reset_peak "$cudaimg_pid"
    for _ in $(seq "$RUNS"); do
        round "$cudaimg_url" "$host/$repo" "$n" >>"$work/wall.cudaimg"
        round "$registry" "$repo" "$n" >>"$work/wall.registry"
    done
    for s in cudaimg registry; do
        pid=$cudaimg_pid; [ "$s" = registry ] && pid=$registry_pid
        w=$(median <"$work/wall.$s")
        printf "%-8s %-16s %10s %12.0f %14.1f\n" "$n" "$([ "$s" = cudaimg ] && echo "cudaimg serve" || echo "distribution 2.8")" "$w" \
            "$(awk -v n="$n" -v b="$bytes" -v w="$w" 'BEGIN {print n * b / w / 1e6}')" \
            "$(awk -v k="$(peak_kb "$pid")" 'BEGIN {print k / 1024}')"
    done
done
