#!/usr/bin/env bash
# `docker run --rm IMAGE true` straight to dockerd against the same command
# through weft-proxy (which attaches every container to the mesh: an address
# from the router, a veth named ethwe, and the wait step before the command),
# alternately, on one dockerd in one host namespace: R rounds (default 3) of N
# runs each way (default 30), medians and the ratio through/direct. Root;
# needs dockerd (Debian package docker.io), the docker CLI and busybox-static.
#
#   bench/proxy.sh                       # as root; N=30 R=3
#   N=100 bench/proxy.sh
#
# It builds `weft` and `weft-proxy` (release) unless WEFT_BIN and PROXY_BIN
# name binaries to use. The router runs alone (a one-router ring, data plane
# on) with the proxy beside it; dockerd has a private socket, data root (under
# /var/tmp, for overlay2), exec root and cgroup parent, and changes no
# iptables, forwarding or bridge. The image is imported from busybox-static,
# so no registry is needed. Nothing outside the namespace, $WORK and the
# cgroup is touched, and all of it is removed on exit or Ctrl-C.
set -euo pipefail

N=${N:-30}
R=${R:-3}
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $(id -u) -eq 0 ]] || { echo "needs root" >&2; exit 1; }
for program in dockerd docker busybox nsenter; do
    command -v "$program" >/dev/null || { echo "missing $program (apt-get install docker.io busybox-static)" >&2; exit 1; }
done
if [[ -z ${WEFT_BIN:-} || -z ${PROXY_BIN:-} ]]; then
    (cd "$SRC" && cargo build --release -p weft-router --bin weft -p weft-proxy --bin weft-proxy)
    TARGET=$(cd "$SRC" && cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
fi
WEFT=${WEFT_BIN:-$TARGET/release/weft}
PROXY=${PROXY_BIN:-$TARGET/release/weft-proxy}
for bin in "$WEFT" "$PROXY"; do
    [[ -x $bin ]] || { echo "missing $bin" >&2; exit 1; }
done
file -L "$(command -v busybox)" 2>/dev/null | grep -q 'dynamically linked' &&
    { echo "busybox is linked dynamically; the image needs busybox-static" >&2; exit 1; }

HOST=wpb-h$$
CGROUP=weft-proxy-bench-$$
IMAGE=weft-bench-busybox:latest
WORK=$(mktemp -d /var/tmp/weft-proxy-bench.XXXXXX)
DIRECT=unix://$WORK/docker.sock
PROXIED=unix://$WORK/proxy.sock
ROUTER="" PROXYPID=""
export DOCKER_CONFIG=$WORK/docker-config DOCKER_BUILDKIT=0
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH

stop() { # PID: SIGTERM, then SIGKILL after 10 s
    kill "$1" 2>/dev/null || return 0
    for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$1" 2>/dev/null || true
}
cleanup() {
    trap - EXIT INT TERM
    if [[ -S $WORK/docker.sock ]]; then
        DOCKER_HOST=$DIRECT docker ps -aq 2>/dev/null | xargs -r env DOCKER_HOST="$DIRECT" docker rm -f >/dev/null 2>&1 || true
    fi
    [[ -n $PROXYPID ]] && stop "$PROXYPID"
    [[ -n $ROUTER ]] && stop "$ROUTER"
    [[ -f $WORK/dockerd.pid ]] && stop "$(cat "$WORK/dockerd.pid")"
    # dockerd unmounts its overlays and namespaces when it stops; a killed one may leave some.
    grep -o " $WORK/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    for hierarchy in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
        [[ -d $hierarchy$CGROUP ]] && find "$hierarchy$CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    ip netns del "$HOST" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_for() { # WHAT PID COMMAND...: polls COMMAND for 30 s while PID lives
    local what=$1 pid=$2
    shift 2
    for _ in $(seq 300); do
        "$@" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || { echo "$what exited" >&2; return 1; }
        sleep 0.1
    done
    echo "$what did not answer within 30 s" >&2
    return 1
}

ip netns add "$HOST"
ip -n "$HOST" link set lo up
mkdir -p "$DOCKER_CONFIG"
# nsenter, not `ip netns exec`: the latter remounts /sys, which hides the cgroups dockerd needs. (An
# array, not a function, so that $! is the process itself: nsenter execs it.)
IN_HOST=(nsenter --net="/var/run/netns/$HOST")
"${IN_HOST[@]}" dockerd -H "$DIRECT" --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
    --cgroup-parent "/$CGROUP" --bridge=none --iptables=false --ip6tables=false --ip-forward=false \
    --ip-masq=false --storage-driver=overlay2 --log-level=warn >"$WORK/dockerd.log" 2>&1 </dev/null &
wait_for dockerd $! env DOCKER_HOST="$DIRECT" docker version || { tail -20 "$WORK/dockerd.log" >&2; exit 1; }

echo "proxy bench secret" >"$WORK/secret"
chmod 600 "$WORK/secret"
"${IN_HOST[@]}" "$WEFT" launch --name b1 --data-dir "$WORK/router" --password-file "$WORK/secret" \
    --api-socket "$WORK/weft.sock" --listen 127.0.0.1:6783 --ipalloc-range 10.48.0.0/16 \
    --ipalloc-init seed=b1 >"$WORK/router.log" 2>&1 </dev/null &
ROUTER=$!
router_ready() { "$WEFT" status --api-socket "$WORK/weft.sock" | grep -q 'Host address: 10\.'; }
wait_for router "$ROUTER" router_ready || { tail -20 "$WORK/router.log" >&2; exit 1; }
"${IN_HOST[@]}" "$PROXY" --socket "$WORK/proxy.sock" --docker-host "$DIRECT" --api-socket "$WORK/weft.sock" \
    --wait-binary "$WORK/weft-wait" >"$WORK/proxy.log" 2>&1 </dev/null &
PROXYPID=$!
wait_for weft-proxy "$PROXYPID" env DOCKER_HOST="$PROXIED" docker version || { tail -20 "$WORK/proxy.log" >&2; exit 1; }

mkdir -p "$WORK/rootfs/bin" "$WORK/rootfs/etc"
cp "$(command -v busybox)" "$WORK/rootfs/bin/busybox"
for applet in sh true; do ln -s busybox "$WORK/rootfs/bin/$applet"; done
echo 'root:x:0:0:root:/:/bin/sh' >"$WORK/rootfs/etc/passwd"
tar -C "$WORK/rootfs" -cf "$WORK/rootfs.tar" .
DOCKER_HOST=$DIRECT docker import -c 'CMD ["/bin/sh"]' "$WORK/rootfs.tar" "$IMAGE" >/dev/null

# One `docker run --rm IMAGE true` against DOCKER_HOST $1; prints its time in microseconds.
one() {
    local start end
    start=$(date +%s%N)
    DOCKER_HOST=$1 docker run --rm "$IMAGE" true
    end=$(date +%s%N)
    echo $(((end - start) / 1000))
}
median() { sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:int((a[NR/2]+a[NR/2+1])/2)}'; }
ms() { echo "$(($1 / 1000)).$((($1 % 1000) / 100))"; }
ratio() { awk -v p="$1" -v d="$2" 'BEGIN{printf "%.2f", p/d}'; }

# The proxied run must really attach: its container sees ethwe.
DOCKER_HOST=$PROXIED docker run --rm "$IMAGE" sh -c 'ip -o -4 addr show ethwe' | grep -q 'inet 10\.48\.' ||
    { echo "a container run through the proxy has no ethwe address" >&2; tail -20 "$WORK/proxy.log" >&2; exit 1; }
for _ in 1 2; do one "$DIRECT" >/dev/null; one "$PROXIED" >/dev/null; done # warm up both
: >"$WORK/all.direct"
: >"$WORK/all.proxied"
for round in $(seq "$R"); do
    : >"$WORK/round.direct"
    : >"$WORK/round.proxied"
    for _ in $(seq "$N"); do
        one "$DIRECT" >>"$WORK/round.direct"
        one "$PROXIED" >>"$WORK/round.proxied"
    done
    cat "$WORK/round.direct" >>"$WORK/all.direct"
    cat "$WORK/round.proxied" >>"$WORK/all.proxied"
    d=$(median <"$WORK/round.direct") p=$(median <"$WORK/round.proxied")
    echo "round $round: median docker run --rm true: direct $(ms "$d") ms, through weft-proxy $(ms "$p") ms, ratio $(ratio "$p" "$d")"
done
d=$(median <"$WORK/all.direct") p=$(median <"$WORK/all.proxied")
echo "all rounds (R=$R, N=$N each): median direct $d us, through weft-proxy $p us, ratio $(ratio "$p" "$d")"
