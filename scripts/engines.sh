#!/usr/bin/env bash
# Builds the cached chroot of today's container engines for the tests (tests/it/engines.rs):
# Debian testing (forky) with docker.io 28.5, docker-cli 28.5, containerd 2.1 and runc 1.3,
# which Debian stable (Docker 20.10, runc 1.1.5) cannot give. The tests run these binaries
# from the chroot (crates/cudaimg-test-support/src/chroot.rs), in a private mount and PID
# namespace on the host's network.
#
#   scripts/engines.sh            build it unless present; prints its path
#
# Where: $CUDAIMG_TEST_CACHE/forky-engines, else /var/cache/cudaimg-test/forky-engines
# (the cache python_base.rs uses too). Built in a temporary directory beside it and renamed
# into place when whole, so a half-built chroot is never used; the marker file
# `.cudaimg-engines` (package versions) is written last, before the rename. Idempotent, and
# safe to run twice at once (flock). Needs root and debootstrap (scripts/setup.sh installs
# it); ~35 s to 2 min and ~450 MB.
set -euo pipefail

cache="${CUDAIMG_TEST_CACHE:-/var/cache/cudaimg-test}"
dest="$cache/forky-engines"
marker=".cudaimg-engines"
packages="docker.io,docker-cli,containerd,runc,ca-certificates,iptables"

if [ -f "$dest/$marker" ]; then
    echo "$dest"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "engines: building $dest needs root (debootstrap)" >&2
    exit 1
fi
command -v debootstrap >/dev/null 2>&1 || {
    echo "engines: debootstrap is not installed (scripts/setup.sh installs it)" >&2
    exit 1
}

# The Debian mirror apt itself uses here (as python_base.rs reads it), else deb.debian.org.
mirror() {
    local f line url
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list; do
        [ -r "$f" ] || continue
        while read -r line; do
            case "$line" in
            URIs:*) url="${line#URIs:}" ;;
            "deb "*) url="$(echo "$line" | awk '{ for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; exit } }')" ;;
            *) continue ;;
            esac
            url="$(echo "$url" | awk '{print $1}')"
            case "$url" in
            */debian | */debian/)
                echo "$url"
                return
                ;;
            esac
        done <"$f"
    done
    echo "http://deb.debian.org/debian"
}

mkdir -p "$cache"
exec 9>"$cache/.forky-engines.lock"
flock 9
# Another run may have finished it while this one waited for the lock.
if [ -f "$dest/$marker" ]; then
    echo "$dest"
    exit 0
fi
# A directory without the marker is a leftover of an older layout or a hand-made copy:
# never used, never deleted silently.
if [ -e "$dest" ]; then
    echo "engines: $dest exists without $marker; remove it to rebuild" >&2
    exit 1
fi

work="$(mktemp -d "$cache/.forky-engines.XXXXXX")"
trap 'rm -rf --one-file-system "$work"' EXIT
root="$work/root"
url="$(mirror)"
start=$SECONDS
echo "engines: debootstrap forky from $url into $dest (~1 min)" >&2
# forky has no script of its own in Debian 12's debootstrap; sid's serves every recent suite.
if ! debootstrap --variant=minbase --include="$packages" forky "$root" "$url" \
    /usr/share/debootstrap/scripts/sid >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    echo "engines: debootstrap failed (log above)" >&2
    exit 1
fi
# The downloaded .debs and package lists are ~100 MB the tests never read.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
dpkg-query --admindir="$root/var/lib/dpkg" -W docker.io docker-cli containerd runc \
    >"$root/$marker"
mv -T "$root" "$dest"
echo "engines: built in $((SECONDS - start)) s:" >&2
sed 's/^/engines:   /' "$dest/$marker" >&2
echo "$dest"
