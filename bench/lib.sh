# Shared by the bench scripts (sourced, not run): where cargo builds, and one
# `weft launch` in a host namespace for benches that need a single router.
# shellcheck shell=bash

# The workspace's cargo target directory (honours CARGO_TARGET_DIR).
weft_target_dir() {
    local src
    src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    (cd "$src" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
}

# launch_one_router NAME RANGE: starts `$WEFT launch` as router NAME in
# namespace $HOST (which must exist, with lo up), the pod range RANGE seeded
# by it alone, data and API socket under $WORK ($WORK/data, $WORK/weft.sock),
# its log in $WORK/router.log. Sets ROUTER to its pid (the caller's cleanup
# kills it) and returns once the router has its host address on the pod
# network; after 10 s without one, prints the log and exits 1.
launch_one_router() {
    local name=$1 range=$2
    echo "$name bench secret" >"$WORK/secret"
    chmod 600 "$WORK/secret"
    ip netns exec "$HOST" "$WEFT" launch --name "$name" --data-dir "$WORK/data" --password-file "$WORK/secret" \
        --api-socket "$WORK/weft.sock" --listen 127.0.0.1:6783 --ipalloc-range "$range" \
        --ipalloc-init "seed=$name" >"$WORK/router.log" 2>&1 &
    ROUTER=$!
    for _ in $(seq 100); do
        "$WEFT" status --api-socket "$WORK/weft.sock" 2>/dev/null | grep -q 'Host address: 10\.' && return 0
        sleep 0.1
    done
    echo "the router did not get its ring within 10 s; its log:" >&2
    cat "$WORK/router.log" >&2
    exit 1
}
