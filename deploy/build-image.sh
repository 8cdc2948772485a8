#!/usr/bin/env bash
# Builds the Weft container image (default tag weft:latest) through the docker
# daemon that DOCKER_HOST names, with no base image to pull: static Weft
# CNI plugins, the router and the firewall tools it runs, each with exactly the
# shared libraries it loads, in a FROM scratch image
# (deploy/Dockerfile says what goes in).
#
#   deploy/build-image.sh                 # then: docker run --rm weft:latest weft --version
#   WEFT_IMAGE=registry.example/weft:0.1.0 deploy/build-image.sh
#
# Needs: cargo, docker (the CLI; the daemon may be remote), nft and iptables
# (Debian packages nftables and iptables, installed when missing and apt-get
# is available), ldd.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=${WEFT_IMAGE:-weft:latest}
target=x86_64-unknown-linux-gnu

die() {
    echo "build-image: $*" >&2
    exit 1
}
say() { echo "build-image: $*" >&2; }

case "$(uname -m)" in x86_64) ;; *) die "only x86_64 is supported so far (this is $(uname -m))" ;; esac
if ! command -v cargo >/dev/null 2>&1 && [[ -x "${HOME:-/root}/.cargo/bin/cargo" ]]; then
    PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || die "cargo not found; install a Rust toolchain (https://rustup.rs)"
command -v docker >/dev/null || die "the docker CLI is not installed"
missing=()
command -v nft >/dev/null || missing+=(nftables)
command -v iptables >/dev/null || missing+=(iptables)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update </dev/null >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" </dev/null >/dev/null ||
        die "apt-get install ${missing[*]} failed"
fi

# The CNI plugins are static: `weft install-cni` copies them onto the node,
# where they run on whatever C library the node has. The router runs in the
# image, next to the C library that nft and iptables need anyway, so it is the
# ordinary release build (which the test suite has built already).
say "building weft (release) and the static CNI plugins (--target $target, crt-static)"
(cd "$root" && cargo build --release --locked --quiet -p weft-router --bin weft) || die "cargo build failed"
# RUSTFLAGS with an explicit --target apply to the binaries only, not to build
# scripts and proc macros, and the artifacts land apart from the ordinary release build.
(cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --quiet \
    --target "$target" -p weft-cni --bins) || die "cargo build of the CNI plugins failed"
out=$(cd "$root" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
out="${out:-$root/target}"

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
fs=$ctx/rootfs
mkdir -p "$fs"/{usr/bin,usr/sbin,etc,run,tmp,var/lib/weft,var/log/weft}
chmod 1777 "$fs/tmp"
for b in weft-net weft-ipam; do
    bin=$out/$target/release/$b
    [[ -x "$bin" ]] || die "no binary $bin after the build"
    ldd "$bin" 2>&1 | grep -qE 'statically linked|not a dynamic executable' || die "$b is not statically linked"
    install -m 0755 "$bin" "$fs/usr/bin/$b"
done

# copy_elf FILE [DEST]: FILE (at DEST, default its own path) and every shared
# library it loads, at their own paths.
copy_elf() {
    local f=$1 dest=${2:-$1} lib
    mkdir -p "$fs$(dirname "$dest")"
    cp -L "$f" "$fs$dest"
    for lib in $(ldd "$f" | awk '/=> \//{print $3} /^\t\/[^ ]*ld-linux/{print $1}'); do
        [[ -e "$fs$lib" ]] && continue
        mkdir -p "$fs$(dirname "$lib")"
        cp -L "$lib" "$fs$lib"
    done
}
copy_elf "$out/release/weft" /usr/bin/weft
# The release profile keeps line tables for backtraces on the build host; the
# image does without them (a third of its size).
if command -v strip >/dev/null; then strip --strip-debug "$fs/usr/bin/weft" "$fs/usr/bin/weft-net" "$fs/usr/bin/weft-ipam"; fi
nft=$(command -v nft)
xt=$(readlink -f "$(command -v iptables)")
case "$xt" in *xtables-nft-multi) ;; *) die "iptables is $xt; the image carries the nftables backend (xtables-nft-multi)" ;; esac
copy_elf "$nft"
[[ "$nft" == /usr/sbin/nft ]] || ln -sf "$nft" "$fs/usr/sbin/nft"
copy_elf "$xt"
for name in iptables iptables-save iptables-restore; do
    ln -sf "$(basename "$xt")" "$fs/usr/sbin/$name"
done
# The extensions iptables loads at run time (-m comment, -m conntrack, -j ...).
xtdir=/usr/lib/x86_64-linux-gnu/xtables
[[ -d "$xtdir" ]] || die "no iptables extensions at $xtdir"
for so in "$xtdir"/*.so; do copy_elf "$so"; done

cp /etc/protocols /etc/services "$fs/etc/" 2>/dev/null || say "no /etc/protocols or /etc/services (package netbase); nft then shows numbers"
printf 'hosts: files dns\n' >"$fs/etc/nsswitch.conf"
printf 'root:x:0:0:root:/:/usr/bin/weft\n' >"$fs/etc/passwd"
printf 'root:x:0:\n' >"$fs/etc/group"

cp "$root/deploy/Dockerfile" "$ctx/Dockerfile"
say "docker build -t $tag (daemon: ${DOCKER_HOST:-default})"
# The legacy builder: it needs no buildx plugin, and a FROM scratch COPY gains
# nothing from BuildKit. (Newer CLIs print a deprecation note for it.)
DOCKER_BUILDKIT=0 docker build --quiet -t "$tag" "$ctx" >/dev/null || die "docker build failed"
say "built $tag: $(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"
