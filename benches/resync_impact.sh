#!/usr/bin/env bash
# Foreground I/O during a resync: fio 4 KiB random writes at QD32 on the survivor, first while
# it serves alone (its peer down: the baseline), then while it resyncs the returning peer.
# The issue's goal: foreground keeps >= 70 % of its IOPS while the resync runs.
#
#   RUNTIME=4 REPS=3 bash benches/resync_impact.sh
#
# Setup per repetition: a witness and sites a, b (RAM volumes of 1 GiB, resync_rate 200 MiB/s,
# 64 KiB granularity) on loopback, site a on core 0, site b on core 0 (both `interrupt`), fio
# on core 1. Site b is killed, site a becomes the survivor, a sequential fio pass dirties
# DIRTY (default 768M) of the volume, then: baseline fio run; site b restarted (the resync
# starts at once); the same fio run during the resync. Reports the median IOPS of both and the
# ratio, with the resync's own progress (bytes copied during the measured run).
set -euo pipefail
RUNTIME=${RUNTIME:-4}
REPS=${REPS:-3}
DIRTY=${DIRTY:-768M}
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin twinblk --bin twinblk-ctl
BIN=$PWD/target/release/twinblk
CTL=$PWD/target/release/twinblk-ctl
WORK=$(mktemp -d /tmp/resync_impact.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
head -c 32 /dev/urandom >"$WORK/key"
cfg() { # name peer nbd repl peer_repl
    cat >"$WORK/$1.toml" <<CFG
[reactor]
cores = [0]
wait = "interrupt"
[nbd]
listen = ["127.0.0.1:$3"]
[nvmf]
listen = []
[control]
socket = "$WORK/$1.sock"
[mirror]
site = "$1"
peer_site = "$2"
listen = ["127.0.0.1:$4"]
peer = "127.0.0.1:$5"
witness = "127.0.0.1:$WPORT"
witness_key_file = "$WORK/key"
resync_rate = "200MiB"
[[volume]]
name = "vol0"
backend = "malloc"
size = "1GiB"
mirror = true
leader = "a"
CFG
}
state() { "$CTL" --socket "$WORK/$1.sock" mirror_status | python3 -c 'import json,sys; print(json.load(sys.stdin)[0][sys.argv[1]])' "$2"; }
wait_state() { for _ in $(seq 400); do [[ $(state "$1" state 2>/dev/null) == "$2" ]] && return; sleep 0.025; done; echo "resync_impact: $1 never became $2" >&2; exit 1; }
start() { "$BIN" serve --config "$WORK/$1.toml" >"$WORK/$1.out" 2>"$WORK/$1.log" & PIDS+=($!); eval "PID_$1=$!"; for _ in $(seq 200); do grep -q Ctrl-C "$WORK/$1.out" 2>/dev/null && return; sleep 0.025; done; cat "$WORK/$1.log" >&2; exit 1; }
fio_iops() { taskset -c 1 fio --name=f --ioengine=nbd --uri="nbd://127.0.0.1:$1/vol0" --rw=randwrite --bs=4k --iodepth=32 --size=1G --time_based --runtime="$RUNTIME" --randrepeat=0 --output-format=json 2>/dev/null | python3 -c 'import json,sys; r=sys.stdin.read(); print(round(json.loads(r[r.index("{"):])["jobs"][0]["write"]["iops"]))'; }
RESULTS=()
for rep in $(seq "$REPS"); do
    WPORT=$((13700 + rep * 10)); NA=$((WPORT + 1)); NB=$((WPORT + 2)); RA=$((WPORT + 3)); RB=$((WPORT + 4))
    "$BIN" witness --listen "127.0.0.1:$WPORT" --key-file "$WORK/key" --state "$WORK/w$rep.state" >/dev/null 2>&1 & PIDS+=($!)
    cfg a b "$NA" "$RA" "$RB"; cfg b a "$NB" "$RB" "$RA"
    start a; start b; wait_state a up; wait_state b up
    kill -9 "$PID_b"; wait_state a survivor
    taskset -c 1 fio --name=d --ioengine=nbd --uri="nbd://127.0.0.1:$NA/vol0" --rw=write --bs=1M --iodepth=8 --size="$DIRTY" --output-format=terse >/dev/null 2>&1
    base=$(fio_iops "$NA")
    before=$(state a resync_bytes)
    start b
    during=$(fio_iops "$NA")
    copied=$(( $(state a resync_bytes) - before ))
    echo "resync_impact: rep $rep: alone $base IOPS, during resync $during IOPS, resync copied $((copied >> 20)) MiB meanwhile" >&2
    RESULTS+=("$base $during $copied")
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); rm -f "$WORK"/*.sock
done
printf '%s\n' "${RESULTS[@]}" | python3 -c '
import statistics as st, sys
rows = [list(map(int, l.split())) for l in sys.stdin if l.strip()]
b = st.median(r[0] for r in rows); d = st.median(r[1] for r in rows); c = st.median(r[2] for r in rows)
print(f"| survivor alone IOPS | during resync IOPS | ratio | resync MiB copied during the run |")
print(f"|---:|---:|---:|---:|")
print(f"| {b:,.0f} | {d:,.0f} | {d/b:.2f}x | {c/2**20:,.0f} |")
verdict = "MET" if d / b >= 0.7 else "NOT MET"
print(f"- foreground during resync / alone: {d/b:.2f}x (goal >= 0.70x: {verdict})")
'
