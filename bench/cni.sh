#!/usr/bin/env bash
# ADD+DEL time of weft-net against the reference bridge + host-local, driven by
# cnitool, alternately in one host namespace on one pod namespace: three
# rounds of N pairs each, medians. Root; needs the Debian package
# containernetworking-plugins and cnitool (tests/clients/build-cnitool.sh).
#
#   cargo build --release -p weft-cni -p weft-router
#   sudo bench/cni.sh            # N=100 by default
#
# Both plugins run in the same namespace against the same pod, from a shell
# loop inside that namespace (no `ip netns exec` per call). weft-net
# talks to a real `weft launch` (data plane on) in the host namespace, which
# persists every allocation and release before answering; host-local writes a
# file per address. Nothing outside the two namespaces and $WORK is touched.
set -euo pipefail

N=${N:-100}
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TARGET=$(weft_target_dir)
NET=${WEFT_NET_BIN:-$TARGET/release/weft-net}
WEFT=${WEFT_BIN:-$TARGET/release/weft}
BRIDGE=${BRIDGE_BIN:-/usr/lib/cni/bridge}
command -v cnitool >/dev/null || { echo "missing cnitool (tests/clients/build-cnitool.sh)" >&2; exit 1; }
for bin in "$NET" "$WEFT" "$BRIDGE"; do
    [[ -x $bin ]] || { echo "missing $bin (cargo build --release -p weft-cni -p weft-router; apt-get install containernetworking-plugins)" >&2; exit 1; }
done

HOST=wcb-h$$
POD=wcb-p$$
WORK=$(mktemp -d /tmp/weft-cni-bench.XXXX)
ROUTER=""
cleanup() {
    [[ -n $ROUTER ]] && kill "$ROUTER" 2>/dev/null && wait "$ROUTER" 2>/dev/null
    ip netns del "$POD" 2>/dev/null || true
    ip netns del "$HOST" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "$HOST"
ip netns add "$POD"
ip -n "$HOST" link set lo up
launch_one_router b1 10.48.0.0/16

# The runtime is cnitool (upstream libcni, as podman and containerd use): each
# plugin sits in a conflist of its own, and every ADD and DEL goes through
# cnitool, which also keeps libcni's result cache as a runtime does.
mkdir -p "$WORK/net.d" "$WORK/bin"
ln -s "$NET" "$WORK/bin/weft-net"
cat >"$WORK/net.d/10-bench.conflist" <<CONF
{"cniVersion":"1.0.0","name":"bench","plugins":[{"type":"weft-net","apiSocket":"$WORK/weft.sock","logFile":"$WORK/cni.log"}]}
CONF
cat >"$WORK/net.d/20-benchbr.conflist" <<CONF
{"cniVersion":"1.0.0","name":"benchbr","plugins":[{"type":"bridge","bridge":"wcbbr0","isGateway":true,"ipMasq":false,
 "ipam":{"type":"host-local","dataDir":"$WORK/host-local","ranges":[[{"subnet":"10.49.0.0/24"}]]}}]}
CONF

cat >"$WORK/loop.sh" <<'LOOP'
#!/usr/bin/env bash
# In the host namespace: N ADD+DEL pairs of one network through cnitool, one
# line per pair with its time in microseconds. Args: NETWORK N POD
set -eu
net=$1 n=$2 pod=/run/netns/$3
for _ in $(seq "$n"); do
    start=$(date +%s%N)
    cnitool add "$net" "$pod" >/dev/null
    cnitool del "$net" "$pod" >/dev/null
    end=$(date +%s%N)
    echo $(((end - start) / 1000))
done
LOOP
chmod +x "$WORK/loop.sh"

export NETCONFPATH=$WORK/net.d CNI_PATH=$WORK/bin:${BRIDGE%/*}
bench() { ip netns exec "$HOST" "$WORK/loop.sh" "$1" "$2" "$POD"; }
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:int((a[NR/2]+a[NR/2+1])/2)}'; }
bench bench 3 >/dev/null # warm up both
bench benchbr 3 >/dev/null
: >"$WORK/all.weft"
: >"$WORK/all.bridge"
for round in 1 2 3; do
    bench bench "$N" | tee -a "$WORK/all.weft" | median >"$WORK/m.weft"
    bench benchbr "$N" | tee -a "$WORK/all.bridge" | median >"$WORK/m.bridge"
    w=$(cat "$WORK/m.weft") b=$(cat "$WORK/m.bridge")
    echo "round $round: median ADD+DEL weft-net $((w / 1000)).$(((w % 1000) / 100)) ms, bridge+host-local $((b / 1000)).$(((b % 1000) / 100)) ms, ratio $(awk -v w="$w" -v b="$b" 'BEGIN{printf "%.2f", w/b}')"
done
w=$(median <"$WORK/all.weft") b=$(median <"$WORK/all.bridge")
echo "all rounds (N=$N each): median weft-net $w us, bridge+host-local $b us, ratio $(awk -v w="$w" -v b="$b" 'BEGIN{printf "%.2f", w/b}')"
