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

need_apt iproute2 busybox-static nftables iptables tcpdump iputils-ping strace # ip netns, busybox ping; nft and iptables for the router's firewall rules; captures and ping -M do for the data-plane tests; strace slows fsync down in the crash test
# The CNI tests: the reference plugins (portmap, bandwidth, bridge,
# host-local) and what cnitool is built from; systemd-analyze for the unit
# file; dockerd for the image; a venv for kubernetes-validate.
need_apt containernetworking-plugins golang-go golang-github-appc-cni-dev dpkg-dev systemd docker.io python3-venv
# The CNI runtime tests (cni/tests/podman.rs, cni/tests/cri.rs): podman with
# its CNI backend, and containerd's CRI plugin driven by
# tests/clients/cri/cri.py, whose grpcio-tools lives in the same venv as
# kubernetes-validate.
need_apt podman conmon runc containerd
venv=${WEFT_TEST_VENV:-/tmp/ct-venv}
if ! "$venv/bin/python3" -c 'import grpc, grpc_tools.protoc' >/dev/null 2>&1; then
    echo "==> installing grpcio-tools into $venv"
    python3 -m venv "$venv" || die "cannot create a Python venv in $venv (python3-venv)"
    "$venv/bin/pip" install --quiet grpcio-tools </dev/null || die "cannot install grpcio-tools from PyPI"
fi
export WEFT_TEST_VENV=$venv
if ! command -v cnitool >/dev/null 2>&1; then
    echo "==> building cnitool (tests/clients/build-cnitool.sh)"
    tests/clients/build-cnitool.sh /usr/local/sbin/cnitool || die "cannot build cnitool"
fi
# Test builds keep line tables (backtraces still name file and line) but not
# full debug info: less to generate, write and link, on CI's two cores.
export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}
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
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
end

begin "lint: cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
# The router without its optional proxy, as `--no-default-features --features
# daemon` builds it: it must compile clean, and its `--proxy` must say how to
# get one (the unit test below runs only in this build).
cargo clippy -p weft-router --no-default-features --features daemon --all-targets --locked -- -D warnings
cargo test -p weft-router --no-default-features --features daemon --locked --lib config:: </dev/null
# weft-cni without its plugins is the spec's JSON alone, which the fuzz crate
# decodes; the fuzz crate must build none of the runtime, HTTP or netlink.
cargo clippy -p weft-cni --no-default-features --all-targets --locked -- -D warnings
heavy=$(cargo tree --manifest-path fuzz/Cargo.toml --locked -e normal --prefix none |
    awk '$1 ~ /^(tokio|hyper|rtnetlink|nix)$/ {print $1}' | sort -u | tr '\n' ' ')
[[ -z $heavy ]] || die "the fuzz crate depends on: $heavy(see fuzz/README.md)"
end

begin "docs: cargo doc -Dwarnings"
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --locked --all-features
end

begin "deploy: systemd unit (systemd-analyze verify)"
tests/deploy.sh systemd
end

begin "deploy: Kubernetes manifests (kubernetes-validate --strict, 1.30 and 1.37)"
deploy/kubernetes/validate.sh
end

begin "deploy: container image (deploy/build-image.sh through a dockerd in a test namespace)"
tests/deploy.sh image
end

# Two fixed seeds, and one new seed every run: the ring must hold for any
# seed, and a failure prints the command that replays it.
#
# Mesh gossip and IPAM at the scale the control plane is designed for, with
# loss and a partition, on this run's random seed; a small lossy mesh on it;
# and a ring created by the consensus of five routers (exit 1 unless
# converged with no duplicate or misplaced address).
#
# Each simulation is one thread, so they run as many at once as there are
# cores, the longest first (on 2 cores: the 1000-router mesh, about 2 min,
# next to the three rings, about 45 s each). Each reports, when it ends, what
# it printed, and a failure prints its output and the command that replays it.
random_seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
begin "simulations: build (release)"
# The same two cargo invocations as `cargo run` below, so that those build
# nothing. Binaries, not examples: no dev-dependencies, so the library built
# for the release `weft` above is reused as it is (examples unify features
# with proptest and friends, which rebuilt half the dependency tree).
cargo build --release --locked -p ipam-crdt --bin ringsim
cargo build --release --locked -p weft-router --bin meshsim
end

sim_names=() sim_cmds=() sim_tails=()
# add_sim NAME TAIL_LINES CARGO_RUN_ARGS: a simulation; TAIL_LINES of its output are shown if it fails.
add_sim() {
    sim_names+=("$1")
    sim_tails+=("$2")
    sim_cmds+=("$3")
}
echo "simulations: this run's random seed is $random_seed"
# 1,000 routers, 2 % loss, a 30 s partition: exits 1 also if an allocation
# failed while its side of the partition had free space
# (allocation_failures_with_space in its JSON line), or if the views and
# rings did not agree within 5 s of the heal (issue 21).
mesh_big="--routers 1000 --seed $random_seed --loss 2 --partition-secs 30 --heal-within-secs 5"
add_sim "mesh simulation: $mesh_big" 20 "-p weft-router --bin meshsim -- $mesh_big"
for seed in 1 2 "$random_seed"; do
    add_sim "ring simulation: 300 peers, 100000 steps, seed $seed" 40 \
        "-p ipam-crdt --bin ringsim -- --peers 300 --steps 100000 --seed $seed"
done
for sim in "--routers 100 --seed $random_seed --loss 5" "--routers 100 --seed $random_seed --init-peer-count 5"; do
    add_sim "mesh simulation: $sim" 20 "-p weft-router --bin meshsim -- $sim"
done

# sim_start I: run simulation I in the background, its output in $sim_dir/I.{out,err}.
sim_start() {
    sim_begun[$1]=$SECONDS
    # shellcheck disable=SC2086 # the command is a list of flags
    cargo run --release --locked ${sim_cmds[$1]} </dev/null >"$sim_dir/$1.out" 2>"$sim_dir/$1.err" &
    sim_pids[$!]=$1
}

begin "simulations: ring and mesh, ${#sim_names[@]} runs, $(nproc 2>/dev/null || echo 1) at a time"
sim_dir=$(mktemp -d)
sim_begun=() sim_pids=() sim_failed=()
sim_jobs=$(nproc 2>/dev/null || echo 1)
next=0 running=0
while ((next < ${#sim_names[@]} || running > 0)); do
    while ((running < sim_jobs && next < ${#sim_names[@]})); do
        sim_start "$next"
        next=$((next + 1)) running=$((running + 1))
    done
    status=0
    wait -n -p done_pid || status=$?
    running=$((running - 1))
    i=${sim_pids[$done_pid]}
    echo "--- ${sim_names[i]}"
    if ((status == 0)); then
        cat "$sim_dir/$i.err"
        tail -n 1 "$sim_dir/$i.out"
        echo "--- ${sim_names[i]}: ok in $((SECONDS - sim_begun[i]))s"
    else
        cat "$sim_dir/$i.err" >&2
        tail -n "${sim_tails[i]}" "$sim_dir/$i.out" >&2
        echo "--- ${sim_names[i]}: FAILED after $((SECONDS - sim_begun[i]))s (replay: cargo run --release ${sim_cmds[i]})" >&2
        sim_failed+=("${sim_names[i]}")
    fi
done
rm -rf "$sim_dir"
((${#sim_failed[@]} == 0)) || die "${#sim_failed[@]} simulation(s) failed, each with its replay command above"
end

# Every decoder of network and disk input under libFuzzer for a short while
# (fuzz/README.md). Stable Rust: `-s none` leaves out AddressSanitizer, the
# one part that needs nightly. Targets run as many at once as there are
# cores; a crash fails the suite and prints the command that replays it.
# Measured on 2 cores: about 2 min with fuzz/target warm (build 70 s, ten
# targets 10 s each, two at a time); for a cold build see fuzz/README.md.
# FUZZ_SECONDS=0 skips the step.
fuzz_seconds=${FUZZ_SECONDS:-10}

# fuzz_one TARGET: run it, log to $fuzz_logs/TARGET.log; the exit status says whether it crashed.
fuzz_one() {
    (cd fuzz && cargo fuzz run "${fuzz_flags[@]}" "$1" -- -max_total_time="$fuzz_seconds" -timeout=10 \
        -print_final_stats=1 </dev/null >"$fuzz_logs/$1.log" 2>&1)
}

# fuzz_all: build every target, run them nproc at a time, die on any crash.
fuzz_all() {
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
        cargo install cargo-fuzz --locked </dev/null || die "cannot install cargo-fuzz"
    fi
    fuzz_flags=(-s none --codegen-units 16)
    (cd fuzz && cargo fuzz build "${fuzz_flags[@]}" </dev/null) || die "the fuzz targets do not build"
    local targets jobs failed=() i j target artifact execs pids
    mapfile -t targets < <(cd fuzz && cargo fuzz list)
    fuzz_logs=$(mktemp -d)
    jobs=$(nproc 2>/dev/null || echo 1)
    for ((i = 0; i < ${#targets[@]}; i += jobs)); do
        local batch=("${targets[@]:i:jobs}")
        pids=()
        for target in "${batch[@]}"; do
            fuzz_one "$target" &
            pids+=("$!")
        done
        for j in "${!batch[@]}"; do
            target=${batch[j]}
            if wait "${pids[j]}"; then
                execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$fuzz_logs/$target.log" | tail -n 1)
                echo "$target: ok, ${execs:-?} inputs"
            else
                # The panic (or libFuzzer's reason, for a timeout or OOM) and the input.
                grep -m 1 -A 2 -E 'panicked at|ERROR: libFuzzer' "$fuzz_logs/$target.log" >&2 ||
                    tail -n 30 "$fuzz_logs/$target.log" >&2
                sed -n '/Output of .std::fmt::Debug./,/^Reproduce/p' "$fuzz_logs/$target.log" | head -n 8 >&2
                artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$fuzz_logs/$target.log" | tail -n 1)
                echo "$target: FAILED (replay: cd fuzz && cargo fuzz run -s none $target $artifact)" >&2
                failed+=("$target")
            fi
        done
    done
    rm -rf "$fuzz_logs"
    ((${#failed[@]} == 0)) || die "fuzz targets failed: ${failed[*]}"
}

begin "fuzz: every target for ${fuzz_seconds}s"
if ((fuzz_seconds > 0)); then
    fuzz_all
else
    echo "skipped (FUZZ_SECONDS=0)"
fi
end

# Last, so that the test summary ends the output: cargo prints one "test
# result" line per test binary (many of them "0 passed" for crates without
# tests yet), so add them up into one closing line.
begin "tests: cargo test (previous steps took $((SECONDS - start_all))s)"
log=$(mktemp)
status=0
cargo test --workspace --all-features --locked </dev/null 2>&1 | tee "$log" || status=$?
read -r passed failed < <(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { print p + 0, f + 0 }' "$log")
rm -f "$log"
trap - ERR
if ((status != 0 || failed != 0)); then
    echo "==> FAILED: $step_name" >&2
fi
echo "tests: $passed passed, $failed failed"
exit "$status"
