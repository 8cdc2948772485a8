#!/usr/bin/env bash
# Checks of what deploy/ ships that need more than cargo (run by tests/run.sh):
#
#   tests/deploy.sh systemd   deploy/systemd/weft.service passes `systemd-analyze
#                             verify` with no warning (in a scratch root that
#                             holds the unit and the weft binary it starts)
#   tests/deploy.sh image     deploy/build-image.sh builds weft:latest through a
#                             private dockerd that runs inside a test network
#                             namespace, and in that image `weft --version`,
#                             `weft-net`, `nft` and `iptables` run
#
# Needs root. Everything it starts or creates is removed on exit, failure
# and Ctrl-C included.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
target_dir() {
    local t
    t=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    echo "${t:-$PWD/target}"
}

check_systemd() {
    command -v systemd-analyze >/dev/null || fail "systemd-analyze is not installed (Debian package systemd)"
    cargo build --release --locked --quiet -p weft-router --bin weft
    local out
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    cp "$(target_dir)/release/weft" "$root/usr/local/bin/weft"
    cp deploy/systemd/weft.service "$root/etc/systemd/system/"
    out=$(systemd-analyze verify --root="$root" /etc/systemd/system/weft.service 2>&1) ||
        fail "systemd-analyze verify: $out"
    [[ -z "$out" ]] || fail "systemd-analyze verify warns: $out"
    echo "ok: deploy/systemd/weft.service verifies clean"
    # With the Docker proxy drop-in, which must reach the command line.
    cp -r deploy/systemd/weft.service.d "$root/etc/systemd/system/"
    out=$(systemd-analyze verify --root="$root" /etc/systemd/system/weft.service 2>&1) ||
        fail "systemd-analyze verify with weft.service.d/proxy.conf: $out"
    [[ -z "$out" ]] || fail "systemd-analyze verify warns with weft.service.d/proxy.conf: $out"
    grep -q '^Environment=WEFT_PROXY=--proxy$' deploy/systemd/weft.service.d/proxy.conf &&
        grep -q '^ExecStart=.* \$WEFT_PROXY ' deploy/systemd/weft.service ||
        fail "weft.service.d/proxy.conf sets WEFT_PROXY, but weft.service's ExecStart does not use it"
    echo "ok: deploy/systemd/weft.service.d/proxy.conf verifies clean"
}

check_image() {
    command -v dockerd >/dev/null || fail "dockerd is not installed (Debian package docker.io)"
    local pid sock out want versions
    ns=wtimg$$
    dir=$(mktemp -d /var/tmp/weft-image-test.XXXXXX)
    sock=$dir/docker.sock
    cleanup_image() {
        if [[ -f "$dir/dockerd.pid" ]]; then
            pid=$(cat "$dir/dockerd.pid")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
        fi
        # dockerd unmounts its overlays when it stops; a killed one may leave some.
        grep -o " $dir/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
        rm -rf "$dir"
        ip netns del "$ns" 2>/dev/null || true
    }
    trap cleanup_image EXIT
    trap 'exit 130' INT TERM
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # nsenter, not `ip netns exec`: the latter remounts /sys and hides the cgroups dockerd needs.
    nsenter --net="/var/run/netns/$ns" dockerd -H "unix://$sock" --data-root "$dir/data" --exec-root "$dir/exec" \
        --pidfile "$dir/dockerd.pid" --bridge=none --iptables=false --ip6tables=false --ip-forward=false \
        --ip-masq=false --storage-driver=overlay2 --log-level=warn >"$dir/dockerd.log" 2>&1 </dev/null &
    export DOCKER_HOST=unix://$sock
    for _ in $(seq 300); do
        docker info >/dev/null 2>&1 && break
        kill -0 $! 2>/dev/null || { cat "$dir/dockerd.log" >&2; fail "dockerd exited"; }
        sleep 0.1
    done
    docker info >/dev/null 2>&1 || { tail -20 "$dir/dockerd.log" >&2; fail "dockerd did not answer within 30 s"; }

    deploy/build-image.sh
    want=$("$(target_dir)/release/weft" --version)
    out=$(docker run --rm --network none weft:latest weft --version) || fail "docker run weft --version failed"
    [[ "$out" == "$want" ]] || fail "weft --version in the image printed '$out', expected '$want'"
    versions=$(docker run --rm --network none -e CNI_COMMAND=VERSION weft:latest weft-net </dev/null) ||
        fail "weft-net VERSION failed in the image: $versions"
    [[ "$versions" == *'"1.1.0"'* ]] || fail "weft-net VERSION in the image: $versions"
    docker run --rm --network none weft:latest nft --version >/dev/null || fail "nft does not run in the image"
    docker run --rm --network none weft:latest iptables --version >/dev/null || fail "iptables does not run in the image"
    echo "ok: weft:latest runs weft ($out), weft-net, nft and iptables"
}

[[ $(id -u) -eq 0 ]] || fail "needs root"
case "${1:-}" in
systemd) check_systemd ;;
image) check_image ;;
*)
    echo "usage: tests/deploy.sh systemd|image" >&2
    exit 2
    ;;
esac
