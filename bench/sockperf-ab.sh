#!/usr/bin/env bash
# A quick latency A/B on the shared testbed, for investigating (not for
# BENCHMARKS.md, which takes peers.sh's numbers): brings up a 2-host testbed,
# one variant, runs N `sockperf ping-pong -t 3 --full-rtt` from pod 1 to pod 2,
# and prints "VARIANT p50 p99" per run; then tears everything down.
#
#   bench/sockperf-ab.sh weft 3; bench/sockperf-ab.sh boringtun 3   # interleave several
#
# Environment: PREP (shell commands run once the variant is up, before the
# measurement: e.g. PREP='ip netns exec pbh1 nft flush ruleset'), HOLD (shell
# commands run after the measurement, with the variant still up, e.g. a
# `perf sched record`), plus whatever the variant reads (WEFT_BIN, PB_WEFT_ARGS).
set -u
BENCH_DIR=${BENCH_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../shared/bench" 2>/dev/null && pwd)}
[ -f "$BENCH_DIR/testbed.sh" ] || { echo "no testbed.sh in BENCH_DIR=$BENCH_DIR" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
# shellcheck source=/dev/null
. "$BENCH_DIR/testbed.sh"
# shellcheck disable=SC2034,SC2317 # the variants read V_* and call pb_* (peers.sh API)
PB_PIDS=() PB_LAST_PID="" V_PIDS="" V_MTU=""
# shellcheck disable=SC2317
pb_spawn() { local ns="$1" log="$2"; shift 2; ip netns exec "$ns" "$@" >"$log" 2>&1 </dev/null & PB_LAST_PID=$!; PB_PIDS+=("$PB_LAST_PID"); }
# shellcheck disable=SC2317
pb_wait() { local deadline=$((SECONDS + $1)); shift; until "$@" >/dev/null 2>&1; do [ "$SECONDS" -ge "$deadline" ] && return 1; sleep 0.1; done; }
# shellcheck disable=SC2317
pb_kill() { local pid; for pid in "$@"; do kill "$pid" 2>/dev/null; done; for pid in "$@"; do wait "$pid" 2>/dev/null; done; return 0; }
for f in "$BENCH_DIR"/variants/*.sh "$(dirname "${BASH_SOURCE[0]}")/weft.sh"; do
    # shellcheck source=/dev/null
    . "$f"
done
v=${1:?usage: sockperf-ab.sh VARIANT [RUNS]} n=${2:-3}
NS1=$(tb_ns_host 1) NS2=$(tb_ns_host 2) UL1=$(tb_ul_ip 1) UL2=$(tb_ul_ip 2) PODC1=$(tb_pod_cidr 1) PODC2=$(tb_pod_cidr 2)
SP=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    [ -n "$SP" ] && kill "$SP" 2>/dev/null
    "variant_${v}_down" "$NS1" "$NS2" "$UL1" "$UL2" "$PODC1" "$PODC2" >/dev/null 2>&1
    [ "${#PB_PIDS[@]}" -gt 0 ] && pb_kill "${PB_PIDS[@]}"
    tb_down >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM
tb_up 2 >/dev/null 2>&1 || { echo "testbed failed" >&2; exit 1; }
if declare -F "variant_${v}_deps" >/dev/null; then "variant_${v}_deps" >/dev/null || exit 1; fi
"variant_${v}_up" "$NS1" "$NS2" "$UL1" "$UL2" "$PODC1" "$PODC2" >"$PB_WORK/ab.up.log" 2>&1 ||
    { echo "$v: up failed" >&2; cat "$PB_WORK/ab.up.log" >&2; exit 1; }
tb_set_pod_mtu 1 "${V_MTU:-1500}"
tb_set_pod_mtu 2 "${V_MTU:-1500}"
T=$(tb_pod_ip 2)
pb_wait 20 ip netns exec "$(tb_ns_pod 1)" ping -c1 -W1 "$T" || { echo "$v: $T unreachable" >&2; exit 1; }
[ -n "${PREP:-}" ] && bash -c "$PREP"
ip netns exec "$(tb_ns_pod 2)" sockperf sr -i "$T" -p 11111 >/dev/null 2>&1 </dev/null &
SP=$!
sleep 0.3
for _ in $(seq "$n"); do
    ip netns exec "$(tb_ns_pod 1)" sockperf pp -i "$T" -p 11111 -t 3 --full-rtt 2>&1 |
        awk -v v="$v" '/percentile 50.000/{p50=$NF} /percentile 99.000/{p99=$NF} END{print v, p50, p99}'
done
[ -n "${HOLD:-}" ] && bash -c "$HOLD"
exit 0
