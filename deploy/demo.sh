#!/usr/bin/env bash
# The README's demo command.
#
# Until the data plane exists, the demo runs the IPAM ring simulation.
# A later issue turns it into a real mesh of three hosts (network namespaces
# joined by an underlay bridge) with pods pinging each other across tunnels.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# rustup installs cargo here but only login shells put it on PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install a Rust toolchain first (https://rustup.rs)" >&2
    exit 1
fi

echo "Weft demo: the IPAM ring simulation."
echo "50 simulated routers split one address pool with a CRDT ring. They allocate,"
echo "release and donate ranges, crash and restart, get partitioned and heal, and"
echo "the ranges of dead routers are reclaimed."
echo "The last line is a JSON summary. Success means the replicas converged with"
echo "zero duplicate and zero lost allocations; the simulator exits non-zero otherwise."
echo

exec cargo run --release --locked -p ipam-crdt --example ringsim -- \
    --peers 50 --steps 20000 --seed 1 </dev/null
