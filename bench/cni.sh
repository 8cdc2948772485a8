#!/usr/bin/env bash
# ADD+DEL time of weft-net against the reference bridge + host-local, run
# alternately in one host namespace on one pod namespace, N pairs each, two
# rounds. Root; needs the Debian package containernetworking-plugins.
#
#   cargo build --release -p weft-cni -p weft-router
#   sudo bench/cni.sh            # N=100 by default
#
# Both plugins run in the same namespace against the same pod, straight from a
# shell loop inside that namespace (no `ip netns exec` per call). weft-net
# talks to a real `weft launch` (data plane on) in the host namespace, which
# persists every allocation and release before answering; host-local writes a
# file per address. Nothing outside the two namespaces and $WORK is touched.
set -euo pipefail

N=${N:-100}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=$(cd "$SRC" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
NET=${WEFT_NET_BIN:-$TARGET/release/weft-net}
WEFT=${WEFT_BIN:-$TARGET/release/weft}
BRIDGE=${BRIDGE_BIN:-/usr/lib/cni/bridge}
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
echo "cni bench secret" >"$WORK/secret"
chmod 600 "$WORK/secret"
ip netns exec "$HOST" "$WEFT" launch --name b1 --data-dir "$WORK/data" --password-file "$WORK/secret" \
    --api-socket "$WORK/weft.sock" --listen 127.0.0.1:6783 --ipalloc-range 10.48.0.0/16 \
    --ipalloc-init seed=b1 >"$WORK/router.log" 2>&1 &
ROUTER=$!
for _ in $(seq 100); do
    "$WEFT" status --api-socket "$WORK/weft.sock" 2>/dev/null | grep -q 'Host address: 10\.' && break
    sleep 0.1
done

cat >"$WORK/loop.sh" <<'LOOP'
#!/usr/bin/env bash
# In the host namespace: N ADD+DEL pairs of one plugin. Args: BIN CONF N POD
set -eu
bin=$1 conf=$2 n=$3
export CNI_CONTAINERID=bench1 CNI_NETNS=/run/netns/$4 CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni
start=$(date +%s%N)
for _ in $(seq "$n"); do
    echo "$conf" | CNI_COMMAND=ADD "$bin" >/dev/null
    echo "$conf" | CNI_COMMAND=DEL "$bin" >/dev/null
done
end=$(date +%s%N)
echo "$(basename "$bin"): $(((end - start) / n / 1000)) us per ADD+DEL (N=$n)"
LOOP
chmod +x "$WORK/loop.sh"

weft_conf="{\"cniVersion\":\"1.0.0\",\"name\":\"bench\",\"type\":\"weft-net\",\"apiSocket\":\"$WORK/weft.sock\",\"logFile\":\"$WORK/cni.log\"}"
bridge_conf="{\"cniVersion\":\"1.0.0\",\"name\":\"benchbr\",\"type\":\"bridge\",\"bridge\":\"wcbbr0\",\"isGateway\":true,\"ipMasq\":false,\"ipam\":{\"type\":\"host-local\",\"dataDir\":\"$WORK/host-local\",\"ranges\":[[{\"subnet\":\"10.49.0.0/24\"}]]}}"
bench() { ip netns exec "$HOST" "$WORK/loop.sh" "$1" "$2" "$3" "$POD"; }
bench "$NET" "$weft_conf" 3 >/dev/null      # warm up both
bench "$BRIDGE" "$bridge_conf" 3 >/dev/null
for _ in 1 2; do
    bench "$NET" "$weft_conf" "$N"
    bench "$BRIDGE" "$bridge_conf" "$N"
done
