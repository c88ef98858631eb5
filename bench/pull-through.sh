#!/usr/bin/env bash
# N clients pulling the same uncached image at once through a pull-through cache:
# `cudaimg serve --pull-through` against Debian's `docker-registry` (CNCF distribution 2.8)
# in proxy mode (`proxy: remoteurl:`), both in front of the same throttled upstream (a fault
# proxy paced to RATE bytes/s over all its connections, before one local registry).
#
#   bench/pull-through.sh            # SCALE=0.2 (~300 MB of amd64 layers), RATE=25000000, RUNS=3
#   SCALE=0.1 RUNS=5 CLIENTS="1 16" bench/pull-through.sh
#
# Each round starts both caches empty (a fresh store, a fresh registry data directory).
# Each client is one curl that fetches the tag's index, the amd64 manifest, its config and
# every layer over one keep-alive connection, to /dev/null, and fails on any error. For each
# server and client count: the median time to the last client done, and the bytes the
# upstream proxy sent (its body bytes, counted by the proxy), with the ratios to one client
# and to one image, and how many clients failed (curl -f) over all rounds. Rounds alternate
# between the servers. Needs the packages of
# scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-0.2}
RATE=${RATE:-25000000}
RUNS=${RUNS:-3}
CLIENTS=${CLIENTS:-"1 4 16"}
scripts/setup.sh >/dev/null
cargo build --release --quiet --bin cudaimg --example serve_fixture
CUDAIMG=$PWD/target/release/cudaimg
work=$(mktemp -d /tmp/cudaimg-bench-pull-through.XXXXXX)
stop_cache() {
    [ -n "${cache_pid:-}" ] && { kill "$cache_pid" 2>/dev/null; wait "$cache_pid" 2>/dev/null || true; }
    cache_pid=
}
cleanup() {
    stop_cache
    # Closing its stdin lets the fixture server stop its registry; a kill would orphan it.
    [ -n "${serve_pid:-}" ] && { exec 3>&- ; wait "$serve_pid" 2>/dev/null; }
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

mkfifo "$work/in"
target/release/examples/serve_fixture --scale "$SCALE" --proxies 1 --throttle "$RATE" \
    <"$work/in" >"$work/fixture.out" &
serve_pid=$!
exec 3>"$work/in"
for _ in $(seq 1200); do [ -s "$work/fixture.out" ] && break; sleep 0.5; done
field() { head -n1 "$work/fixture.out" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(eval("v" + sys.argv[1]))' "$1"; }
registry=$(field '["registry"]'); repo_tag=$(field '["repository_tag"]')
upstream=$(field '["proxies"][0]'); bytes=$(field '["bytes"]')
repo=${repo_tag%%:*}; tag=${repo_tag#*:}
echo "image: $repo_tag ($bytes bytes of amd64 config and layers), upstream paced to $RATE B/s"

# What the proxy has sent so far: asked on the fixture's stdin, answered as `sent N`.
asked=0
sent() {
    echo sent >&3
    asked=$((asked + 1))
    for _ in $(seq 200); do
        [ "$(grep -c '^sent' "$work/fixture.out")" -ge "$asked" ] && { grep '^sent' "$work/fixture.out" | tail -1 | cut -d' ' -f2; return; }
        sleep 0.05
    done
    echo "the fixture server did not answer" >&2; exit 1
}

# The paths one client fetches (same on both servers), read from the registry itself.
python3 - "$registry" "$repo" "$tag" >"$work/paths" <<'PY'
import json, sys, urllib.request
base, repo, tag = sys.argv[1:]
accept = ", ".join(["application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json"])
def get(ref):
    r = urllib.request.urlopen(urllib.request.Request(f"{base}/v2/{repo}/manifests/{ref}", headers={"Accept": accept}))
    return json.load(r)
print(f"manifests/{tag}")
m = get(tag)
if "manifests" in m:
    d = next(e["digest"] for e in m["manifests"] if e["platform"]["architecture"] == "amd64")
    print(f"manifests/{d}")
    m = get(d)
print(f"blobs/{m['config']['digest']}")
for l in m["layers"]:
    print(f"blobs/{l['digest']}")
PY

client() { # base-url
    local args=()
    while read -r p; do args+=(-o /dev/null "$1/v2/$repo/$p"); done <"$work/paths"
    curl -sf -H "Accept: application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json" "${args[@]}"
}

# An empty cache in front of the upstream proxy; sets cache_url.
start_cudaimg() {
    rm -rf "$work/store"
    printf '[registries."docker.io"]\nendpoint = "%s"\nmirrors = []\n' "$upstream" >"$work/mirrors.toml"
    rm -f "$work/cache.json"
    "$CUDAIMG" --json --config "$work/mirrors.toml" --store "$work/store" serve --pull-through \
        --addr 127.0.0.1:0 >"$work/cache.json" 2>"$work/cache.log" &
    cache_pid=$!
    for _ in $(seq 100); do [ -s "$work/cache.json" ] && break; sleep 0.1; done
    cache_url=http://$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["addr"])' "$work/cache.json")
}
start_distribution() {
    rm -rf "$work/dist"; mkdir -p "$work/dist"
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$work/dist/config.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/dist/data
http:
  addr: 127.0.0.1:$port
proxy:
  remoteurl: $upstream
YML
    docker-registry serve "$work/dist/config.yml" >"$work/dist/log" 2>&1 &
    cache_pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
    cache_url=http://127.0.0.1:$port
}

round() { # server clients: prints "wall-seconds upstream-bytes failed-clients"
    "start_$1"
    local before start end pids=()
    before=$(sent)
    start=$(date +%s.%N)
    for _ in $(seq "$2"); do client "$cache_url" & pids+=($!); done
    # A failed client (curl -f: an error status or a cut body) is counted, not fatal: the
    # table says how many there were.
    local failed=0
    for p in "${pids[@]}"; do wait "$p" || failed=$((failed + 1)); done
    end=$(date +%s.%N)
    local after
    after=$(sent)
    stop_cache
    awk -v a="$start" -v b="$end" -v s="$((after - before))" -v f="$failed" 'BEGIN {printf "%.3f %d %d\n", b - a, s, f}'
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A one
printf "%-8s %-24s %10s %10s %14s %12s %16s\n" clients server "last s" "x 1 client" "upstream MB" "x image" "failed clients"
for n in $CLIENTS; do
    rm -f "$work"/r.*
    for _ in $(seq "$RUNS"); do
        round cudaimg "$n" >>"$work/r.cudaimg"
        round distribution "$n" >>"$work/r.distribution"
    done
    for s in cudaimg distribution; do
        w=$(cut -d' ' -f1 <"$work/r.$s" | median)
        b=$(cut -d' ' -f2 <"$work/r.$s" | median)
        [ -z "${one[$s]:-}" ] && one[$s]=$w
        f=$(awk '{s += $3} END {print s}' "$work/r.$s")
        printf "%-8s %-24s %10s %10.2f %14.1f %12.2f %10s of %-3s\n" "$n" \
            "$([ "$s" = cudaimg ] && echo "cudaimg --pull-through" || echo "distribution 2.8 proxy")" "$w" \
            "$(awk -v a="$w" -v b="${one[$s]}" 'BEGIN {print a / b}')" \
            "$(awk -v b="$b" 'BEGIN {print b / 1e6}')" \
            "$(awk -v b="$b" -v i="$bytes" 'BEGIN {print b / i}')" "$f" "$((n * RUNS))"
    done
done
echo "medians over $RUNS rounds (SCALE=$SCALE, RATE=$RATE B/s; load average $(cut -d' ' -f1-3 /proc/loadavg))"
