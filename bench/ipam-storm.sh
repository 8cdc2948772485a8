#!/usr/bin/env bash
# Allocations per second with durability on: one `weft launch` in a host
# namespace, its data directory on the real disk (every write of its IPAM
# state is a write, an fsync and a rename), and N allocations sent at once
# through its API socket, as N CNI plugins starting N pods would. R runs of N
# fresh ids each; prints each run's rate and the median. Root.
#
#   cargo build --release -p weft-router
#   bench/ipam-storm.sh                            # as root; N=200 R=7
#   WEFT_BIN=/path/to/main/weft bench/ipam-storm.sh         # another build
#
# One curl process sends the N requests over N connections at once
# (--parallel), so process start-up is not what is measured. A run counts
# from the first request sent to the last answer; every answer must be an
# address, else the run fails. The router answers an allocation only once it
# is on disk; allocations that arrive while a write is in flight share the
# next write (group commit). Nothing outside the namespace and $WORK is
# touched ($WORK is under $TMPDIR, /tmp by default: put it on the disk you
# want to measure).
set -euo pipefail

N=${N:-200}
R=${R:-7}
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TARGET=$(weft_target_dir)
WEFT=${WEFT_BIN:-$TARGET/release/weft}
[[ -x $WEFT ]] || { echo "missing $WEFT (cargo build --release -p weft-router)" >&2; exit 1; }
command -v curl >/dev/null || { echo "missing curl" >&2; exit 1; }

HOST=wis-h$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/weft-ipam-storm.XXXX")
ROUTER=""
cleanup() {
    [[ -n $ROUTER ]] && kill "$ROUTER" 2>/dev/null && wait "$ROUTER" 2>/dev/null
    ip netns del "$HOST" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$HOST"
ip -n "$HOST" link set lo up
launch_one_router s1 10.52.0.0/16
SOCK=$WORK/weft.sock

# writes: the router's IPAM state writes so far (weft_ipam_state_writes_total,
# ok and failed), or "n/a" for a router without that metric.
writes() {
    ip netns exec "$HOST" curl --silent http://127.0.0.1:6782/metrics |
        awk '/^weft_ipam_state_writes_total/ {n += $2; seen = 1} END {print seen ? n : "n/a"}'
}

# storm RUN: N allocations at once; prints the rate (allocations per second)
# and how many writes they took.
storm() {
    local run=$1 i
    : >"$WORK/curl.conf"
    # One operation per request (options do not carry over `next`).
    for ((i = 0; i < N; i++)); do
        {
            ((i > 0)) && echo 'next'
            echo "unix-socket = \"$SOCK\""
            echo 'url = "http://weft/v1/ipam/allocate"'
            echo 'header = "Content-Type: application/json"'
            printf 'data = "{\\"id\\": \\"storm-%s-%s\\"}"\n' "$run" "$i"
        } >>"$WORK/curl.conf"
    done
    local start end before after
    before=$(writes)
    start=$(date +%s%N)
    curl --silent --parallel --parallel-immediate --parallel-max "$N" \
        --config "$WORK/curl.conf" >"$WORK/answers" 2>&1 || true
    end=$(date +%s%N)
    after=$(writes)
    local ok
    ok=$(grep -o '"address"' "$WORK/answers" | wc -l)
    if ((ok != N)); then
        echo "run $run: $ok of $N allocations answered with an address:" >&2
        head -c 2000 "$WORK/answers" >&2
        exit 1
    fi
    local used=n/a
    [[ $before != n/a ]] && used=$((after - before))
    awk -v n="$N" -v ns=$((end - start)) -v w="$used" 'BEGIN { printf "%.0f %s\n", n / (ns / 1e9), w }'
}

median() { sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:int((a[NR/2]+a[NR/2+1])/2)}'; }
storm warmup >/dev/null
: >"$WORK/rates"
for ((run = 1; run <= R; run++)); do
    out=$(storm "$run")
    read -r rate used <<<"$out"
    echo "run $run: $N allocations, $rate/s, $used writes"
    echo "$rate" >>"$WORK/rates"
done
echo "$("$WEFT" --version 2>/dev/null || echo weft): median of $R runs of $N concurrent allocations: $(median <"$WORK/rates") allocations/s"
