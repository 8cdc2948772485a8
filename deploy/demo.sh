#!/usr/bin/env bash
# The README's demo command: a real Weft mesh on this one machine.
#
# Three "hosts" are network namespaces joined by an underlay bridge (in a
# namespace of its own); each runs `weft launch` the way Weave users start a
# mesh (host 1 with no peer, every other host naming host 1 only; the
# routers find each other by gossip), and each gets two "pods",
# plugged in as a routed CNI plugin would do it, with addresses allocated
# through its router's API. The demo then
#   1. shows `weft status` of every router,
#   2. pings every pod from every pod on another host, and a remote pod
#      from a host,
#   3. sends a marker string from a pod to a pod on another host while
#      capturing the underlay, and shows that the marker arrived but never
#      crossed the underlay in clear,
# and removes everything it made (namespaces, processes, captures) when it
# ends, Ctrl-C included. Exit status 0 only if every check passed.
#
# Needs root on Linux (network namespaces, TUN). Installs what is missing
# with apt-get (iproute2, busybox-static for ping and nc, tcpdump, nftables)
# and builds the router with cargo. Nothing is added to the root namespace:
# the addresses (10.98.0.0/24 underlay, 10.32.0.0/16 pods) exist only inside
# the demo's namespaces, whose names start with "wd-".
#
# Environment: WEFT_BIN (use this `weft` binary instead of building one).
set -euo pipefail

# Prompts must never wait: nothing below reads the caller's terminal.
exec </dev/null

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PREFIX=wd                # every namespace made here is named wd-...
UL_NET=10.98.0           # underlay: host i is 10.98.0.i/24
POD_RANGE=10.32.0.0/16   # the pod range the routers split between them
HOSTS=(1 2 3)
PODS=(a b)
MARK_PORT=7777
GATEWAY=169.254.1.1      # every pod's default gateway, on the host side of its veth

work=""                  # scratch directory: secret, state, sockets, logs, captures
pids=()                  # every background process started here
checks=0
failures=0
failed_checks=()

say() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
    printf 'demo: error: %s\n' "$*" >&2
    exit 1
}

# pass WHAT / fail WHAT: count a check and print it.
pass() {
    checks=$((checks + 1))
    printf '    ok    %s\n' "$*"
}
fail() {
    checks=$((checks + 1))
    failures=$((failures + 1))
    failed_checks+=("$*")
    printf '    FAIL  %s\n' "$*"
}

# --- names --------------------------------------------------------------------
ns_ul() { echo "$PREFIX-ul"; }
ns_host() { echo "$PREFIX-h$1"; }       # host i
ns_pod() { echo "$PREFIX-h$1-$2"; }     # pod p on host i
ul_ip() { echo "$UL_NET.$1"; }
api() { echo "$work/h$1.sock"; }

# Every namespace a demo run makes (this one's or a crashed earlier one's).
demo_namespaces() {
    ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-(ul|h[0-9]+(-[a-z]+)?)$" || true
}

# --- clean-up -------------------------------------------------------------------
stop_pids() {
    local pid deadline=$((SECONDS + 3))
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

# Deletes every demo namespace, after killing what still runs inside it
# (only processes this demo, or an earlier run of it, started there).
remove_namespaces() {
    local ns pid
    for ns in $(demo_namespaces); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    for ns in $(demo_namespaces); do
        ip netns delete "$ns" 2>/dev/null || echo "demo: could not delete namespace $ns" >&2
    done
}

cleaned=0
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    ((cleaned)) && return
    cleaned=1
    if ((status != 0 && status != 130 && status != 143)) && [[ -n "$work" ]]; then
        show_logs
    fi
    say "Cleaning up: routers and captures stopped, namespaces and scratch files removed"
    ((${#pids[@]} == 0)) || stop_pids "${pids[@]}"
    remove_namespaces
    [[ -n "$work" ]] && rm -rf "$work"
    if [[ -n "$(demo_namespaces)" ]]; then
        echo "demo: some namespaces are left: $(demo_namespaces | tr '\n' ' ')" >&2
        status=1
    fi
    exit "$status"
}

show_logs() {
    local h log
    for h in "${HOSTS[@]}"; do
        log="$work/h$h.log"
        [[ -s "$log" ]] || continue
        echo
        echo "---- last lines of host $h's router log ($log) ----"
        tail -n 15 "$log"
    done
}

# --- helpers ------------------------------------------------------------------
# need CMD:PACKAGE...: install the Debian packages of missing commands.
need() {
    local spec missing=()
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
    done
    ((${#missing[@]} == 0)) && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    info "installing ${missing[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get install ${missing[*]} failed"
}

# wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds; 1 at the deadline.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS >= deadline)) && return 1
        sleep 0.2
    done
}

weft_cli() { # HOST ARGS...: a `weft` command against host HOST's router
    local h=$1
    shift
    "$weft" "$@" --api-socket "$(api "$h")"
}

# json_field NAME: the scalar value of "NAME" in the JSON on stdin (enough for
# `weft status --json`, whose top-level fields are unique).
json_field() {
    tr -d '\n' | grep -o "\"$1\": *[^,}]*" | head -n 1 | sed 's/^[^:]*: *//; s/^"//; s/"$//'
}

established() { # HOST: how many connections to other routers it has
    weft_cli "$1" status --json 2>/dev/null | json_field connections_established
}

meshed() { # HOST: connected to both others
    [[ "$(established "$1")" == "$((${#HOSTS[@]} - 1))" ]]
}

data_sessions() { # HOST: how many routers its data plane is up with
    weft_cli "$1" status --json 2>/dev/null | tr -d '\n ' | grep -o '"data":{"state":"up"' | wc -l
}

data_up() { # HOST: a data-plane session with both others
    [[ "$(data_sessions "$1")" == "$((${#HOSTS[@]} - 1))" ]]
}

# --- start ------------------------------------------------------------------------
[[ "$(uname -s)" == Linux ]] || die "the demo needs Linux (network namespaces, TUN)"
((EUID == 0)) || die "the demo needs root (network namespaces, TUN): run it as root"

trap cleanup EXIT
trap 'echo "demo: error: this command failed (line $LINENO): $BASH_COMMAND" >&2' ERR
trap 'echo; echo "demo: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

echo "Weft demo: three hosts, two pods on each, one encrypted mesh, all on this machine."

say "Checking tools"
need ip:iproute2 busybox:busybox-static tcpdump:tcpdump nft:nftables
if [[ ! -e /dev/net/tun ]]; then
    modprobe tun 2>/dev/null || true
    [[ -e /dev/net/tun ]] || die "/dev/net/tun is missing and 'modprobe tun' did not create it"
fi
info "iproute2, busybox (ping, nc), tcpdump and nftables are here; so is /dev/net/tun"

say "Building the router"
if [[ -n "${WEFT_BIN:-}" ]]; then
    weft=$WEFT_BIN
    info "using WEFT_BIN=$weft"
else
    # rustup installs cargo here, but only login shells put it on PATH.
    if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
        PATH="${HOME:-/root}/.cargo/bin:$PATH"
    fi
    target=$(cd "$root" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p') || true
    weft="${target:-$root/target}/release/weft"
    if command -v cargo >/dev/null 2>&1; then
        info "cargo build --release -p weft-router (the first build takes a few minutes)"
        (cd "$root" && cargo build --release --locked --quiet -p weft-router) || die "the build failed"
    elif [[ -x "$weft" ]]; then
        info "cargo is not installed; using the binary already built"
    else
        die "cargo not found and no binary at $weft; install a Rust toolchain first (https://rustup.rs)"
    fi
fi
[[ -x "$weft" ]] || die "no weft binary at $weft"
info "$("$weft" --version)"

if [[ -n "$(demo_namespaces)" ]]; then
    say "Removing what an earlier demo run left behind: $(demo_namespaces | tr '\n' ' ')"
    remove_namespaces
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/weft-demo.XXXXXX")

say "Creating ${#HOSTS[@]} hosts (network namespaces) on an underlay bridge"
ip netns add "$(ns_ul)"
ip -n "$(ns_ul)" link set lo up
ip -n "$(ns_ul)" link add br0 type bridge
ip -n "$(ns_ul)" link set br0 up
for h in "${HOSTS[@]}"; do
    ns=$(ns_host "$h")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$(ns_ul)" link add "h$h" type veth peer name eth0 netns "$ns"
    ip -n "$(ns_ul)" link set "h$h" master br0 up
    ip -n "$ns" addr add "$(ul_ip "$h")/24" dev eth0
    ip -n "$ns" link set eth0 up
    info "host $h: namespace $ns, eth0 $(ul_ip "$h")/24"
done

say "Launching a router on every host: weft launch on host 1, weft launch $(ul_ip 1) on the others"
(umask 077 && "$weft" secret >"$work/secret")
info "cluster secret generated with 'weft secret' (every router reads it from --password-file)"
for h in "${HOSTS[@]}"; do
    # One peer is enough: the others are learned by gossip.
    peers=()
    ((h == 1)) || peers=("$(ul_ip 1)")
    ip netns exec "$(ns_host "$h")" env RUST_LOG="${RUST_LOG:-info}" \
        "$weft" launch --name "host$h" --data-dir "$work/h$h" --api-socket "$(api "$h")" \
        --password-file "$work/secret" --ipalloc-range "$POD_RANGE" "${peers[@]}" \
        >"$work/h$h.log" 2>&1 &
    pids+=("$!")
    info "host $h: weft launch --name host$h ... ${peers[*]}  (pid $!, log $work/h$h.log)"
done

say "Waiting for the routers to find each other and form a full mesh"
start=$SECONDS
for h in "${HOSTS[@]}"; do
    wait_for 60 meshed "$h" || die "host $h has $(established "$h" || echo no) of $((${#HOSTS[@]} - 1)) connections after 60 s"
done
info "full mesh after $((SECONDS - start)) s"
for h in "${HOSTS[@]}"; do
    wait_for 30 data_up "$h" ||
        die "host $h has a data-plane session with $(data_sessions "$h" || echo no) of $((${#HOSTS[@]} - 1)) routers after 30 s"
done
info "every router has a data-plane session with every other after $((SECONDS - start)) s"

say "Allocating two pod addresses per host through each router's API (weft ipam allocate)"
declare -A pod_ip
for h in "${HOSTS[@]}"; do
    for p in "${PODS[@]}"; do
        id="demo-h$h-$p"
        # The ring exists once the three routers have agreed on it.
        wait_for 30 weft_cli "$h" ipam allocate "$id" || die "host $h could not allocate an address for $id"
        addr=$(weft_cli "$h" ipam allocate "$id") # idempotent: the same address again
        pod_ip[$h$p]=${addr%/*}
        info "host $h, pod $p: $addr"
    done
done

say "Waiting for each router's data plane: TUN device 'weft' and the route to the pod range"
for h in "${HOSTS[@]}"; do
    wait_for 30 sh -c "ip -n '$(ns_host "$h")' route show exact '$POD_RANGE' | grep -q ' dev weft '" ||
        die "host $h routes no pod traffic into the 'weft' device after 30 s"
done
mtu=$(ip -n "$(ns_host 1)" -o link show dev weft | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
info "every host routes $POD_RANGE into 'weft' (MTU $mtu)"

say "Plugging in the pods as a routed CNI plugin would (veth, address/32, default via $GATEWAY)"
for h in "${HOSTS[@]}"; do
    hns=$(ns_host "$h")
    for p in "${PODS[@]}"; do
        pns=$(ns_pod "$h" "$p")
        ip=${pod_ip[$h$p]}
        ip netns add "$pns"
        ip -n "$pns" link set lo up
        ip -n "$hns" link add "pod-$p" mtu "$mtu" type veth peer name eth0 mtu "$mtu" netns "$pns"
        ip -n "$pns" addr add "$ip/32" dev eth0
        ip -n "$pns" link set eth0 up
        ip -n "$pns" route add "$GATEWAY" dev eth0 scope link
        ip -n "$pns" route add default via "$GATEWAY" dev eth0
        ip -n "$hns" addr add "$GATEWAY/32" dev "pod-$p" scope link
        ip -n "$hns" link set "pod-$p" up
        # As a CNI plugin does; the router's own `unreachable` routes sit at
        # metric 1024, so this /32 at metric 0 wins and never collides.
        ip -n "$hns" route add "$ip/32" dev "pod-$p" scope link
        info "pod $pns: eth0 $ip/32 (host side: pod-$p on $hns)"
    done
done

say "weft status on every host"
for h in "${HOSTS[@]}"; do
    echo "---- host $h ----"
    weft_cli "$h" status | sed 's/^/    /'
done

# ping_ok NS ADDR: one reply within 1 s, retried for up to 10 s (the first
# packet to a router may wait for a session's handshake). The last attempt's
# output is in $work/ping.out.
ping_ok() {
    local deadline=$((SECONDS + 10))
    while true; do
        if ip netns exec "$1" busybox ping -c 1 -W 1 "$2" >"$work/ping.out" 2>&1; then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            return 1
        fi
        sleep 0.2
    done
}
rtt() { sed -n 's/.*time=\([0-9.]* ms\).*/\1/p' "$work/ping.out" | head -n 1; }

say "Pinging every pod from every pod on another host (busybox ping, through the tunnels)"
for h in "${HOSTS[@]}"; do
    for p in "${PODS[@]}"; do
        for g in "${HOSTS[@]}"; do
            ((g == h)) && continue
            for q in "${PODS[@]}"; do
                what="pod $h$p (${pod_ip[$h$p]}) -> pod $g$q (${pod_ip[$g$q]})"
                if ping_ok "$(ns_pod "$h" "$p")" "${pod_ip[$g$q]}"; then
                    pass "$what: $(rtt)"
                else
                    fail "$what: no reply in 10 s ($(tail -n 1 "$work/ping.out"))"
                fi
            done
        done
    done
done
what="host 1 (its own address from the pod range) -> pod 3a (${pod_ip[3a]})"
if ping_ok "$(ns_host 1)" "${pod_ip[3a]}"; then
    pass "$what: $(rtt)"
else
    fail "$what: no reply in 10 s ($(tail -n 1 "$work/ping.out"))"
fi

say "Showing that the underlay carries only ciphertext"
marker="weft-demo-marker-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
from_ns=$(ns_pod 1 a)
to_ns=$(ns_pod 2 a)
to_ip=${pod_ip[2a]}
info "marker: $marker, sent over TCP from pod 1a to pod 2a ($to_ip:$MARK_PORT)"
# tcpdump's AppArmor profile lets it write files named *.pcap; -Z root keeps
# it writing into this root-only directory after it drops privileges;
# --immediate-mode hands over every packet at once (by default the kernel
# holds them for up to a second, and those still held when tcpdump is
# stopped are lost). On br0, in promiscuous mode, it sees every bridged frame.
ip netns exec "$(ns_ul)" tcpdump -i br0 -n -U --immediate-mode -Z root -w "$work/underlay.pcap" >"$work/tcpdump-ul.log" 2>&1 &
pids+=("$!")
ip netns exec "$(ns_host 2)" tcpdump -i pod-a -n -U --immediate-mode -Z root -w "$work/pod.pcap" >"$work/tcpdump-pod.log" 2>&1 &
pids+=("$!")
wait_for 10 grep -q "listening on" "$work/tcpdump-ul.log" || die "tcpdump on the underlay did not start: $(cat "$work/tcpdump-ul.log")"
wait_for 10 grep -q "listening on" "$work/tcpdump-pod.log" || die "tcpdump at pod 2a did not start: $(cat "$work/tcpdump-pod.log")"
info "capturing everything on the underlay bridge, and at pod 2a's veth for comparison"
ip netns exec "$to_ns" busybox nc -l -p "$MARK_PORT" >"$work/received.txt" 2>"$work/nc.log" &
nc_pid=$!
pids+=("$nc_pid")
wait_for 5 sh -c "ip netns exec '$to_ns' ss -Hltn 'sport = :$MARK_PORT' | grep -q ." ||
    die "the receiver at pod 2a is not listening: $(cat "$work/nc.log")"
# shellcheck disable=SC2016 # expanded by the inner bash
if ! ip netns exec "$from_ns" timeout 10 bash -c 'printf "%s\n" "$1" >"/dev/tcp/$2/$3"' _ "$marker" "$to_ip" "$MARK_PORT"; then
    fail "pod 1a could not connect to pod 2a on port $MARK_PORT"
fi
wait_for 10 sh -c "! kill -0 $nc_pid" || true
sleep 0.5 # the captures have written the last packets (-U), let them see the FIN
stop_pids "${pids[@]: -3}" # the two captures and the receiver
pids=("${pids[@]:0:${#pids[@]}-3}")

if grep -qF "$marker" "$work/received.txt"; then
    pass "pod 2a received the marker: $(tr -d '\n' <"$work/received.txt")"
else
    fail "pod 2a did not receive the marker (got: $(head -c 200 "$work/received.txt"))"
fi
if grep -aqF "$marker" "$work/pod.pcap"; then
    pass "the capture at pod 2a's veth holds the marker in clear (so a capture would show it)"
else
    fail "the capture at pod 2a's veth does not hold the marker"
fi
datagrams=$(tcpdump -r "$work/underlay.pcap" -n 'udp port 6784' 2>/dev/null | wc -l)
if ((datagrams > 0)); then
    pass "the underlay capture holds $datagrams datagrams on udp/6784 (the tunnels)"
else
    fail "the underlay capture holds no datagrams on udp/6784: the marker did not cross it"
fi
if grep -aqF "$marker" "$work/underlay.pcap"; then
    fail "the marker appears IN CLEAR in the underlay capture"
else
    pass "the marker appears nowhere in the underlay capture ($(stat -c %s "$work/underlay.pcap") bytes)"
fi
info "a few tunnel datagrams as tcpdump sees them:"
tcpdump -r "$work/underlay.pcap" -n -q -c 4 'udp port 6784' 2>/dev/null | sed 's/^/      /'
info "one in hex: after the IP and UDP headers, Weft's transport header (type 04,"
info "the receiver's session index, a 64-bit counter), then nothing but ciphertext:"
tcpdump -r "$work/underlay.pcap" -n -q -c 1 -X 'udp port 6784 and greater 100' 2>/dev/null | sed 's/^/      /'

say "What the routers counted (weft status): sessions, packets, drops"
for h in "${HOSTS[@]}"; do
    weft_cli "$h" status | grep -E '^ *(Sessions|Dropped):' | sed "s/^ */    host $h: /"
done

say "Summary"
if ((failures == 0)); then
    echo "    all $checks checks passed: 3 routers meshed, every pod reached every pod on another host,"
    echo "    and the marker crossed the underlay only as ciphertext."
else
    echo "    $failures of $checks checks FAILED:"
    printf '      - %s\n' "${failed_checks[@]}"
    exit 1
fi
