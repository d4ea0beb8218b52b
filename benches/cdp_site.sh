# shellcheck shell=bash
# Shared by the one-site CDP scripts (sourced, not run): cdp_site_serve writes "$WORK/c.toml"
# (one reactor on core 0 with wait $2, NBD on 127.0.0.1:$PORT, a 1 GiB RAM volume vol0 with its
# journal in "$JDIR/vol0": 64 MiB segments, retention 512 MiB), starts binary $1 with it
# (output in "$WORK/log"), sets PID and waits until the export answers. Needs WORK, JDIR, PORT.

cdp_site_serve() { # binary wait
    cat >"$WORK/c.toml" <<CFG
[reactor]
cores = [0]
wait = "$2"
[nbd]
listen = ["127.0.0.1:$PORT"]
[nvmf]
listen = []
[[volume]]
name = "vol0"
backend = "malloc"
size = "1GiB"
block_size = 4096
[volume.cdp]
dir = "$JDIR/vol0"
segment_size = "64MiB"
retention_bytes = "512MiB"
CFG
    "$1" serve --config "$WORK/c.toml" >"$WORK/log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do
        nbdinfo "nbd://127.0.0.1:$PORT/vol0" >/dev/null 2>&1 && return
        sleep 0.1
    done
    echo "cdp_site_serve: $1 did not start; log:" >&2
    cat "$WORK/log" >&2
    exit 1
}
