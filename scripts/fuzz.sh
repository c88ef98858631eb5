#!/usr/bin/env bash
# Runs each fuzz target in fuzz/ for a bounded time (FUZZ_SECONDS, default 60), with
# cargo-fuzz on the nightly toolchain; installs cargo-fuzz if it is missing. A crash, a
# panic, a leak past libFuzzer's limits or an input slower than FUZZ_TIMEOUT seconds (default
# 10) fails the script, leaving the input under fuzz/artifacts/TARGET/.
#
# No sanitizer: the workspace forbids `unsafe`, so AddressSanitizer has nothing of ours to
# check, and it doubles the build. Panics, hangs and runaway memory are what these targets
# look for, and libFuzzer catches those by itself.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-60}"
timeout_s="${FUZZ_TIMEOUT:-10}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

# cargo-fuzz passes nightly-only flags to rustc. A machine without the nightly toolchain (and
# no route to rustup's servers to fetch it: CI reaches crates.io only) builds on stable with
# RUSTC_BOOTSTRAP=1, which lets stable accept them; the targets are the same either way.
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    echo "fuzz: no nightly toolchain here; building on stable with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    toolchain=()
fi

for target in $(cargo "${toolchain[@]}" fuzz list); do
    echo "fuzz: $target for ${seconds}s"
    mkdir -p "corpus/$target"
    # New inputs go to corpus/ (not kept in git); seeds/ holds a few valid ones to start from.
    cargo "${toolchain[@]}" fuzz run --sanitizer none "$target" "corpus/$target" "seeds/$target" -- \
        -max_total_time="$seconds" -timeout="$timeout_s" -rss_limit_mb=2048
done
