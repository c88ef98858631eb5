#!/usr/bin/env bash
# Carrying an image across an air gap: `skopeo sync` (to a directory, and registry to
# registry) beside cudaimg (pull into the store, write a bundle, import the bundle into a
# registry and into a store), for the same selection: the CUDA-like 12.4.1 runtime image,
# every platform (amd64 and arm64), served by a loopback registry.
#
#   bench/sync.sh              # SCALE=0.2 (a fifth of the real layer sizes), RUNS=1
#   SCALE=1 RUNS=3 bench/sync.sh
#
# The bundle is written by `cudaimg sync SPEC --to DIR` (a spec naming the reference), after
# `pull --all-platforms` filled the store, so the write is timed apart from the download.
# Then the incremental case, once: upstream publishes one new tag (12.4.2, sharing the OS
# layer), and each tool carries it: skopeo (no incremental mode) syncs the new tag into a
# directory of its own; cudaimg writes `sync --to DIR2 --since DIR` for a spec naming both
# tags, and imports that second bundle into the registry that took the first.
#
# Prints per step wall time, peak RSS and the bytes written to disk, then the totals.
# Needs the packages of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-0.2}
RUNS=${RUNS:-1}
scripts/setup.sh
cargo build --release --quiet --bin cudaimg --example serve_fixture
CUDAIMG=$PWD/target/release/cudaimg
work=$(mktemp -d "${TMPDIR:-/var/tmp}/cudaimg-bench-sync.XXXXXX")
cleanup() {
    [ -n "${serve_pid:-}" ] && { exec 3>&- ; wait "$serve_pid" 2>/dev/null; }
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

mkfifo "$work/in"
target/release/examples/serve_fixture --scale "$SCALE" --destination <"$work/in" >"$work/serve.json" &
serve_pid=$!
exec 3>"$work/in"
for _ in $(seq 1200); do [ -s "$work/serve.json" ] && break; sleep 0.5; done
field() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())[sys.argv[2]])' "$work/serve.json" "$1"; }
ref=$(field reference); dest=$(field destination)
echo "selection: $ref, every platform; destination registry $dest"
: >"$work/mirrors.toml"

measure() { # label, command...: prints "label: wall s, peak RSS MB"
    local label=$1; shift
    sync
    /usr/bin/time -f "%e %M" -o "$work/t" "$@" >"$work/out" 2>"$work/err" || { echo "failed: $*" >&2; cat "$work/err" >&2; exit 1; }
    read -r wall rss <"$work/t"
    printf '%-28s %8.2f s  %6d MB RSS\n' "$label:" "$wall" $((rss / 1024))
}
bytes() { du -sb "$1" | cut -f1; }
SK=(skopeo sync --all --preserve-digests --src docker --src-tls-verify=false)

for i in $(seq "$RUNS"); do
    r="$work/run$i"; mkdir -p "$r"
    echo "run $i"
    measure "skopeo sync to dir" "${SK[@]}" --dest dir "$ref" "$r/skopeo-dir"
    echo "    skopeo dir: $(bytes "$r/skopeo-dir") bytes"
    measure "skopeo sync to registry" "${SK[@]}" --dest docker --dest-tls-verify=false "$ref" "$dest/skopeo$i"

    C=("$CUDAIMG" -q --config "$work/mirrors.toml" --store "$r/store")
    measure "cudaimg pull (store)" "${C[@]}" pull --all-platforms "$ref"
    printf '[[images]]\nreferences = ["%s"]\n' "$ref" >"$work/sync.toml"
    measure "cudaimg sync --to (bundle)" "${C[@]}" sync "$work/sync.toml" --to "$r/bundle"
    echo "    store: $(bytes "$r/store") bytes; bundle: $(bytes "$r/bundle") bytes ($(tail -n1 "$work/out"))"
    F=("$CUDAIMG" -q --config "$work/mirrors.toml" --store "$r/far-store")
    measure "cudaimg import to registry" "${F[@]}" import "$r/bundle" --to "$dest/cudaimg$i"
    measure "cudaimg import to store" "$CUDAIMG" -q --config "$work/mirrors.toml" --store "$r/far-store2" import "$r/bundle"
    echo "    far store: $(bytes "$r/far-store2") bytes"
    digest() { skopeo inspect --raw --tls-verify=false "docker://$1" | sha256sum | cut -c1-16; }
    echo "    top digest (sha256, first 16): source $(digest "$ref"), skopeo $(digest "$dest/skopeo$i/${ref##*/}"), cudaimg $(digest "$dest/cudaimg$i/${ref#*/}")"
done

echo "incremental: one new tag upstream"
echo publish >&3
for _ in $(seq 1200); do grep -q '^published ' "$work/serve.json" && break; sleep 0.5; done
ref2=$(sed -n 's/^published //p' "$work/serve.json")
measure "skopeo sync new tag to dir" "${SK[@]}" --dest dir "$ref2" "$r/skopeo-dir2"
echo "    skopeo dir: $(bytes "$r/skopeo-dir2") bytes"
printf '[[images]]\nreferences = ["%s", "%s"]\n' "$ref" "$ref2" >"$work/sync2.toml"
measure "cudaimg sync --since (bundle 2)" "${C[@]}" sync "$work/sync2.toml" --to "$r/bundle2" --since "$r/bundle"
echo "    bundle 2: $(bytes "$r/bundle2") bytes ($(tail -n1 "$work/out"))"
measure "cudaimg import bundle 2" "${F[@]}" import "$r/bundle2" --to "$dest/cudaimg$RUNS"
echo "    top digest of the new tag (sha256, first 16): source $(digest "$ref2"), cudaimg $(digest "$dest/cudaimg$RUNS/${ref2#*/}")"
