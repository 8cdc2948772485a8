#!/usr/bin/env bash
# Builds cnitool (the CNI project's command-line runtime) offline, for the
# CNI tests: its source comes from Debian's source package
# golang-github-appc-cni (CNI 1.1.2), and it compiles in GOPATH mode against
# the libcni that golang-github-appc-cni-dev installs in /usr/share/gocode.
# The deb-src index is private to this run; the machine's apt configuration
# is not changed.
#
#   tests/clients/build-cnitool.sh [OUT]      # default /usr/local/sbin/cnitool
#
# Needs the Debian packages golang-go, golang-github-appc-cni-dev, dpkg-dev.
set -euo pipefail

out=${1:-/usr/local/sbin/cnitool}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The first mirror in the apt sources (their `URIs:` and `deb` lines, not comments).
mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | grep -E '^(URIs:|deb )' |
    grep -oE 'https?://[^ ]+' | grep -v security | head -n 1 || true)
[[ -n "$mirror" ]] || { echo "build-cnitool: no Debian mirror found in the apt sources" >&2; exit 1; }
# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
mkdir -p "$work/lists/partial" "$work/src"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $codename main" >"$work/sources.list"
apt=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/nonexistent -o "Dir::State::Lists=$work/lists")
apt-get "${apt[@]}" update >/dev/null </dev/null
(cd "$work/src" && apt-get "${apt[@]}" source --download-only golang-github-appc-cni >/dev/null 2>&1 </dev/null &&
    dpkg-source -x golang-github-appc-cni_*.dsc cni >/dev/null)
pkg=$work/gopath/src/weft-tests/cnitool
mkdir -p "$pkg"
cp "$work/src/cni/cnitool/cnitool.go" "$pkg/"
(cd "$pkg" && GO111MODULE=off GOPATH="$work/gopath:/usr/share/gocode" GOCACHE="$work/cache" GOFLAGS="" \
    go build -o "$out" .)
echo "built $out"
