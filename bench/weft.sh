# shellcheck shell=bash disable=SC2034  # sets V_* for peers.sh
# The `weft` and `weftnat` variants for ../shared/bench/peers.sh: two Weft
# routers, one in each testbed host namespace, on the default ports (6783
# control, 6784 data), started with the same `weft launch` a user would type.
#
#   sudo ../shared/bench/peers.sh -f bench/weft.sh -v "plain boringtun weft weftnat"
#
# - `weft` is the tunnel alone, like the peers' variants: `--no-masquerade`,
#   since the testbed's pods talk only to each other and the peers install no
#   firewall rules. On these bare hosts (FORWARD accepts, no rules) Weft then
#   adds no netfilter hook at all (see router/src/io/firewall.rs).
# - `weftnat` is `weft launch` with its defaults, pod egress masqueraded: the
#   NAT turns connection tracking on for every packet in the host namespace,
#   tunnel datagrams included. It shows what that costs (as any tunnel pays
#   on a host where Docker or kube-proxy already track connections).
#
# The pod range is 10.32.0.0/22, split by the seed list h1,h2 in list order:
# h1 owns 10.32.0.0/23 and h2 owns 10.32.2.0/23, so each host owns the range
# holding its testbed pod (10.32.1.2 and 10.32.2.2), and each router delivers
# the traffic for its own pod.
#
# Sourced by peers.sh (which runs with `set -u` only): this file defines
# functions and sets no shell options. The binary is built from the project
# this file is in (`cargo build --release -p weft-router`), into the target
# directory cargo reports (CARGO_TARGET_DIR is honoured); WEFT_BIN overrides.
#
# Environment: PB_WEFT_RANGE (pod range, default 10.32.0.0/22),
# PB_WEFT_ARGS (extra `weft launch` flags, e.g. "--mtu 1400"),
# PB_WEFT_LOG (RUST_LOG of the routers, default warn).

WEFT_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WEFT_RANGE="${PB_WEFT_RANGE:-10.32.0.0/22}"
WEFT_DEV=weft       # the TUN device every router creates
_WEFT_PIDS=""       # routers started by the last variant_weft_up

# rustup installs cargo here, but sudo and non-login shells do not put it on PATH.
case ":$PATH:" in *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;; *) PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin" ;; esac

# The `weft` binary: $WEFT_BIN, else the release build in cargo's target directory.
_weft_bin() {
    if [ -n "${WEFT_BIN:-}" ]; then
        echo "$WEFT_BIN"
        return
    fi
    local target
    target=$(cd "$WEFT_SRC" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    echo "${target:-$WEFT_SRC/target}/release/weft"
}

variant_weft_deps() {
    if [ -z "${WEFT_BIN:-}" ]; then
        command -v cargo >/dev/null || { echo "weft: cargo not found (install Rust with rustup)" >&2; return 1; }
        tb_log "weft: cargo build --release -p weft-router (a no-op when up to date)"
        (cd "$WEFT_SRC" && nice -n 10 cargo build --release --locked --quiet -p weft-router) >&2 || return 1
    fi
    local w
    w=$(_weft_bin)
    [ -x "$w" ] || { echo "weft: no binary at $w" >&2; return 1; }
}

variant_weft_version() {
    local rev
    rev=$(git -C "$WEFT_SRC" describe --always --dirty 2>/dev/null) || rev=unknown
    echo "$("$(_weft_bin)" --version) (git $rev)"
}

# $1 $2: host netns   $3 $4: their underlay addresses   $5 $6: their pod CIDRs
variant_weft_up() { _weft_up --no-masquerade "$@"; }
variant_weftnat_up() { _weft_up "" "$@"; }
variant_weftnat_down() { variant_weft_down "$@"; }
variant_weftnat_deps() { variant_weft_deps "$@"; }
variant_weftnat_version() { variant_weft_version "$@"; }

# _weft_up FLAGS NS1 NS2 UL1 UL2 POD1 POD2: the routers, with FLAGS (one
# `weft launch` flag or "") added to the launch.
_weft_up() {
    local flag="$1"
    shift
    local ns=("$1" "$2") ul=("$3" "$4") pod=("$5" "$6") d="$PB_WORK/weft" w i n peer
    w=$(_weft_bin)
    _weft_clean "$1" "$2"
    rm -rf "$d"
    mkdir -p "$d"
    chmod 700 "$d"
    (umask 077 && "$w" secret >"$d/secret") || return 1
    _WEFT_PIDS=""
    for i in 0 1; do
        n="h$((i + 1))"
        peer="${ul[$((1 - i))]}"
        # shellcheck disable=SC2086  # PB_WEFT_ARGS is a list of flags
        pb_spawn "${ns[$i]}" "$d/$n.log" env RUST_LOG="${PB_WEFT_LOG:-warn}" \
            "$w" launch --name "$n" --data-dir "$d/$n" --api-socket "$d/$n.sock" \
            --password-file "$d/secret" --ipalloc-range "$WEFT_RANGE" --ipalloc-init seed=h1,h2 \
            ${flag:+"$flag"} ${PB_WEFT_ARGS:-} "$peer"
        V_PIDS+="$PB_LAST_PID "
        _WEFT_PIDS+="$PB_LAST_PID "
    done
    # Each host routes the other's pod through the TUN device once its router
    # has the ring and a host address.
    for i in 0 1; do
        n="h$((i + 1))"
        if ! pb_wait 30 _weft_routed "${ns[$i]}" "${pod[$((1 - i))]%/*}"; then
            echo "weft: $n has no route to ${pod[$((1 - i))]} through $WEFT_DEV after 30 s"
            ip -n "${ns[$i]}" route
            "$w" status --api-socket "$d/$n.sock"
            tail -20 "$d/$n.log"
            return 1
        fi
    done
    V_TARGET=$("$w" status --json --api-socket "$d/h2.sock" | jq -r '.host_address // empty')
    V_TARGET="${V_TARGET%/*}"
    [ -n "$V_TARGET" ] || { echo "weft: h2 reports no host_address"; return 1; }
    V_MTU=$(tb_mtu "${ns[0]}" "$WEFT_DEV")
    [ -n "$V_MTU" ] || { echo "weft: no $WEFT_DEV device in ${ns[0]}"; return 1; }
    echo "weft: up; h2's host address $V_TARGET, MTU $V_MTU"
}

# Stops the routers (peers.sh kills V_PIDS only after this returns, and a
# running router would put back what is removed here), then removes what
# they leave in the host namespaces. Idempotent. Not `weft reset`: nothing
# is handed over, the scratch state is simply dropped.
variant_weft_down() {
    # shellcheck disable=SC2086  # a list of pids
    [ -n "$_WEFT_PIDS" ] && pb_kill $_WEFT_PIDS
    _WEFT_PIDS=""
    _weft_clean "$1" "$2"
    rm -f "$PB_WORK/weft/"*.sock
}

# _weft_routed NS ADDR: NS sends ADDR into the Weft TUN device.
_weft_routed() {
    ip -n "$1" -o route get "$2" 2>/dev/null | grep -q " dev $WEFT_DEV "
}

# _weft_clean NS...: what a router leaves in its host namespace when it
# stops (it keeps kernel state on purpose, so that a restart does not cut
# pods off): the TUN device (its routes go with it), any other route of
# Weft's routing protocol (RTPROT_WEFT, 87), nftables `table ip weft`, and
# the iptables chain WEFT-FORWARD with its jumps from FORWARD.
_weft_clean() {
    local ns n
    for ns in "$@"; do
        ip -n "$ns" link del "$WEFT_DEV" 2>/dev/null
        ip -n "$ns" route flush proto "${PB_WEFT_RTPROTO:-87}" 2>/dev/null
        command -v nft >/dev/null && ip netns exec "$ns" nft delete table ip weft 2>/dev/null
        if command -v iptables >/dev/null; then
            n=0
            while ((n++ < 64)) && ip netns exec "$ns" iptables -w -D FORWARD \
                -m comment --comment weft -j WEFT-FORWARD 2>/dev/null; do :; done
            ip netns exec "$ns" iptables -w -F WEFT-FORWARD 2>/dev/null &&
                ip netns exec "$ns" iptables -w -X WEFT-FORWARD 2>/dev/null
        fi
    done
    return 0
}
