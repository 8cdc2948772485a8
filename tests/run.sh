#!/usr/bin/env bash
# The README's test command, and what CI runs (.ci/run). Needs only a Rust
# toolchain installed with rustup; installs anything else it needs.
#
# Cargo reads CARGO_BUILD_JOBS itself, so setting it limits every step.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
    echo "error: $*" >&2
    exit 1
}

# need_apt PKG...: install the Debian packages that are missing, running
# `apt-get update` at most once. For steps that need system packages.
apt_updated=0
need_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get to install them"
    if ((apt_updated == 0)); then
        DEBIAN_FRONTEND=noninteractive apt-get update </dev/null || die "apt-get update failed"
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" </dev/null ||
        die "apt-get install ${missing[*]} failed"
}

# rustup installs cargo here but only login shells put it on PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found; install a Rust toolchain first (https://rustup.rs)"

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    echo "==> installing the rustfmt and clippy components"
    command -v rustup >/dev/null 2>&1 || die "rustfmt or clippy is missing and rustup is not available to add them"
    rustup component add rustfmt clippy </dev/null ||
        die "rustfmt or clippy is missing and 'rustup component add rustfmt clippy' failed"
fi

start_all=$SECONDS
step_name=""
step_start=0

# begin NAME: announce a step and start its clock.
begin() {
    step_name=$1
    step_start=$SECONDS
    echo
    echo "==> $step_name"
}

# end: report how long the current step took.
end() {
    echo "<== $step_name: ok in $((SECONDS - step_start))s"
}

trap 'echo "==> FAILED: $step_name (after $((SECONDS - step_start))s)" >&2' ERR

begin "format: cargo fmt --check"
cargo fmt --all -- --check
end

begin "lint: cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
end

begin "docs: cargo doc -Dwarnings"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --locked
end

for seed in 1 2 3; do
    begin "ring simulation: 300 peers, 100000 steps, seed $seed"
    out=$(mktemp)
    if ! cargo run --release --locked -p ipam-crdt --example ringsim -- \
        --peers 300 --steps 100000 --seed "$seed" </dev/null >"$out"; then
        tail -n 40 "$out" >&2
        rm -f "$out"
        die "ring simulation failed with seed $seed (replay: cargo run --release -p ipam-crdt --example ringsim -- --peers 300 --steps 100000 --seed $seed)"
    fi
    tail -n 1 "$out"
    rm -f "$out"
    end
done

# Last, so that the test runner's summary lines end the output.
begin "tests: cargo test (previous steps took $((SECONDS - start_all))s)"
exec cargo test --workspace --all-features --locked </dev/null
