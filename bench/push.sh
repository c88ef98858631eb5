#!/usr/bin/env bash
# Writing to a registry: `cudaimg copy` beside `skopeo copy docker://… docker://…`, and
# `cudaimg push` (from the store) beside `skopeo copy oci:STORE:NAME docker://…` (the store is
# an OCI layout skopeo reads), between two loopback registries, alternating. Each run pushes
# to a new repository with nothing to skip or mount: cudaimg's blob-location record and
# skopeo's blob-info cache are cleared between runs. The image has OCI media types: skopeo's
# oci: transport lists only OCI manifests in a layout.
#
#   bench/push.sh              # SCALE=1 (the 12.4.1 runtime's real layer sizes, ~1.5 GB), RUNS=5
#   SCALE=0.3 RUNS=3 bench/push.sh
#
# Prints per-run wall time, peak RSS and CPU seconds, then medians and the ratio
# skopeo/cudaimg.
#
# Then once more, each tool through a slow link to the destination: a fault proxy throttled to
# THROTTLE bytes/s (25 MB/s) both ways that cuts each upload session once, at half its first
# request body, and drops what it cut (as a buffering proxy does; skopeo's one-PATCH bodies
# have no length, so they are cut at half the largest layer). Prints each tool's wall time
# against the link time (image bytes / THROTTLE), and what it did. THROTTLE=0 skips this.
# Needs the packages of scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-1}
RUNS=${RUNS:-5}
THROTTLE=${THROTTLE:-25000000}
scripts/setup.sh
cargo build --release --quiet --bin cudaimg --example serve_fixture
CUDAIMG=$PWD/target/release/cudaimg
work=$(mktemp -d /tmp/cudaimg-bench-push.XXXXXX)
cleanup() {
    [ -n "${serve_pid:-}" ] && { exec 3>&- ; wait "$serve_pid" 2>/dev/null; }
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT

mkfifo "$work/in"
slow=()
[ "$THROTTLE" -gt 0 ] && slow=(--destination-throttle "$THROTTLE" --cut-uploads)
target/release/examples/serve_fixture --scale "$SCALE" --oci --destination "${slow[@]}" <"$work/in" >"$work/serve.json" &
serve_pid=$!
exec 3>"$work/in"
for _ in $(seq 1200); do [ -s "$work/serve.json" ] && break; sleep 0.5; done
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$work/serve.json" "$1"; }
ref=$(field reference); bytes=$(field bytes); dest=$(field destination)
echo "image: $ref, linux/amd64: $bytes bytes of layers and config; destination $dest"
: >"$work/mirrors.toml"
C=("$CUDAIMG" -q --config "$work/mirrors.toml" --store "$work/store")
"${C[@]}" pull --platform linux/amd64 "$ref" >/dev/null || { echo "pull failed" >&2; exit 1; }
name=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"])' "$work/store/index.json")

forget() { # nothing known about the destination: no mounts, nothing skipped
    rm -f "$work/store/blob-locations.json" /var/lib/containers/cache/blob-info-cache-v1.* \
        "$HOME"/.local/share/containers/cache/blob-info-cache-v1.*
    sync
}
measure() { # label, command...: appends "wall rss cpu" to $work/$label
    local label=$1; shift
    /usr/bin/time -f "%e %M %U %S" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { echo "failed: $*" >&2; cat "$work/err" >&2; exit 1; }
    awk '{printf "%s %s %.2f\n", $1, $2, $3 + $4}' "$work/t" >>"$work/$label"
    tail -1 "$work/$label"
}
SK=(skopeo copy -q --src-tls-verify=false --dest-tls-verify=false)
for i in $(seq "$RUNS"); do
    forget; a=$(measure copy-cudaimg "${C[@]}" copy --platform linux/amd64 "$ref" "$dest/copy-c$i:x")
    forget; b=$(measure copy-skopeo "${SK[@]}" --override-arch amd64 "docker://$ref" "docker://$dest/copy-s$i:x")
    forget; c=$(measure push-cudaimg "${C[@]}" push "$name" "$dest/push-c$i:x")
    forget; d=$(measure push-skopeo "${SK[@]}" "oci:$work/store:$name" "docker://$dest/push-s$i:x")
    echo "run $i [wall s, peak RSS KB, CPU s]: copy cudaimg $a | skopeo $b; push cudaimg $c | skopeo $d"
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
col() { awk -v c="$2" '{print $c}' "$work/$1" | median; }
for op in copy push; do
    cw=$(col $op-cudaimg 1); sw=$(col $op-skopeo 1); cr=$(col $op-cudaimg 2); sr=$(col $op-skopeo 2)
    echo "$op: median wall cudaimg $cw s, skopeo $sw s, ratio skopeo/cudaimg $(awk -v a="$sw" -v b="$cw" 'BEGIN {printf "%.2f", a/b}'); peak RSS cudaimg $((cr / 1024)) MB, skopeo $((sr / 1024)) MB"
done

[ "$THROTTLE" -gt 0 ] || exit 0
slow_dest=$(field destination_proxy)
link=$(awk -v b="$bytes" -v r="$THROTTLE" 'BEGIN {printf "%.1f", b / r}')
echo "through $slow_dest: $THROTTLE bytes/s, each upload cut once; link time for the image ${link} s"
slow_run() { # label, command...: wall time, exit status, the tail of stderr
    local label=$1; shift
    local start end rc=0
    start=$(date +%s.%N)
    "$@" >"$work/out" 2>"$work/err" || rc=$?
    end=$(date +%s.%N)
    local wall
    wall=$(awk -v a="$start" -v b="$end" 'BEGIN {printf "%.1f", b - a}')
    echo "$label: ${wall} s ($(awk -v w="$wall" -v l="$link" 'BEGIN {printf "%.2f", w / l}')x link time), exit $rc"
    if [ "$rc" -eq 0 ] && [ -s "$work/out" ] && head -c1 "$work/out" | grep -q '{'; then
        python3 -c 'import json,sys
r = json.load(open(sys.argv[1]))
blobs = r["blobs"]
print("  sent %d bytes for %d (%.3fx), resumes %d, restarts %d, digest %s" % (r["bytes_uploaded"], r["total_bytes"], r["bytes_uploaded"] / r["total_bytes"], sum(b["resumes"] for b in blobs), sum(b["restarts"] for b in blobs), r["digest"]))' "$work/out"
    fi
    [ "$rc" -eq 0 ] || tail -2 "$work/err" | sed 's/^/  /'
}
CJ=("$CUDAIMG" --json --config "$work/mirrors.toml" --store "$work/store")
forget; slow_run "copy cudaimg" "${CJ[@]}" copy --platform linux/amd64 "$ref" "$slow_dest/slow-copy-c:x"
forget; slow_run "copy skopeo" "${SK[@]}" --override-arch amd64 "docker://$ref" "docker://$slow_dest/slow-copy-s:x"
forget; slow_run "push cudaimg" "${CJ[@]}" push "$name" "$slow_dest/slow-push-c:x"
forget; slow_run "push skopeo" "${SK[@]}" "oci:$work/store:$name" "docker://$slow_dest/slow-push-s:x"
forget; slow_run "push skopeo --retry-times 1" "${SK[@]}" --retry-times 1 "oci:$work/store:$name" "docker://$slow_dest/slow-push-s1:x"
# Byte-exact at the destination: what skopeo reads there is the image cudaimg was given.
for repo in slow-copy-c slow-push-c; do
    got=$(skopeo inspect --raw --tls-verify=false "docker://$dest/$repo:x" | sha256sum | cut -d' ' -f1)
    echo "$repo: manifest sha256:$got as read back by skopeo"
done
