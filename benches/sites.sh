# Shared by the side-by-side scripts that run twinblk sites (sourced, not run): starting a site
# from "$WORK/<name>.toml", stopping every site, reading a site's mirror_status, waiting for
# site a's mirror link. Needs WORK, BIN, CTL, PIDS (an array) and SCRIPT (for messages).

start() { # name
    "$BIN" serve --config "$WORK/$1.toml" >"$WORK/$1.out" 2>"$WORK/$1.log" &
    PIDS+=($!)
    for _ in $(seq 100); do [[ -S $WORK/$1.sock ]] && grep -q "Ctrl-C" "$WORK/$1.out" && return; sleep 0.05; done
    echo "$SCRIPT: site $1 did not start; log:" >&2; cat "$WORK/$1.log" >&2; exit 1
}

stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
    rm -rf "$WORK"/*.sock "$WORK"/*.state
}

mstat() { "$CTL" --socket "$WORK/$1.sock" mirror_status; }

wait_link() {
    for _ in $(seq 200); do
        mstat a | grep -q '"state": "up"' && return
        sleep 0.05
    done
    echo "$SCRIPT: link never came up" >&2; exit 1
}
