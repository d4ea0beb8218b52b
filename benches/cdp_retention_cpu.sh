#!/usr/bin/env bash
# What consolidation costs in steady state (issue 12): one twinblk site, a 1 GiB RAM volume with
# its CDP journal on tmpfs (64 MiB segments, retention_bytes 512 MiB), written once, then warmed
# with 1.5 GiB of random 64 KiB writes so the journal sits at its retention; then fio's nbd
# engine writes 4 KiB at random at QD32 while the script counts, over a window of WIN seconds,
# the segments consolidated and the CPU time of each of the daemon's threads (/proc, in ticks of
# 10 ms). The window opens once consolidation reached the 4 KiB writes (a segment of 10,000
# records or more: the warm-up's 64 KiB records are 16 times fewer per segment, and cost less
# per segment), so every binary is counted on the same kind of segment. Two binaries in turns
# (NEW, then OLD_BIN), PAIRS times; medians at the end.
#
#   OLD_BIN=/path/to/old/twinblk PAIRS=3 bash benches/cdp_retention_cpu.sh
#
# Reported per run: IOPS of the whole fio run, segments consolidated in the window, ticks of the
# cdp-retention thread per segment (its CPU per 64 MiB consolidated), and the ticks of the
# cdp-retention, cdp-segments and reactor threads, and the server's CPU (all its threads) per
# I/O in the window (IOPS of the whole run times WIN: an estimate; with WAIT=interrupt the
# reactor does not spin, so this is work, not waiting). Placement: the reactor on core 0 (wait
# WAIT, default adaptive), fio on core 1 (the daemon's other threads run on the cores no
# reactor takes: 1).
# Environment: OLD_BIN (required), NEW_BIN (default: this tree's release build), WAIT, PAIRS (3), RT
# (seconds of fio, 40), WIN (seconds counted, 10), PORT (15210),
# SHM (/dev/shm). Needs fio (nbd engine), nbdinfo, taskset, python3. Listens on 127.0.0.1 only;
# removes its journals.

set -euo pipefail
PAIRS=${PAIRS:-3}
RT=${RT:-40}
WIN=${WIN:-10}
PORT=${PORT:-15210}
WAIT=${WAIT:-adaptive}
SHM=${SHM:-/dev/shm}
die() { echo "cdp_retention_cpu: $*" >&2; exit 1; }
[[ -x ${OLD_BIN:-} ]] || die "OLD_BIN must name a twinblk binary"
((RT >= WIN + 10)) || die "RT must be at least WIN + 10"
for t in fio nbdinfo taskset python3; do command -v "$t" >/dev/null || die "missing tool: $t"; done
cd "$(dirname "$0")/.."
if [[ -z ${NEW_BIN:-} ]]; then
    cargo build --release --quiet --bin twinblk
    NEW_BIN=$PWD/target/release/twinblk
fi
source benches/cdp_site.sh # (the working directory is the repository root here)
WORK=$(mktemp -d /tmp/cdp_retention_cpu.XXXXXX)
JDIR=$(mktemp -d "$SHM/cdp_retention_cpu.XXXXXX")
PID=""
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK" "$JDIR"
}
trap cleanup EXIT

ticks() { # pid -> "comm ticks" per thread, summed by name
    for t in /proc/"$1"/task/*; do
        echo "$(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
    done | awk '{s[$1] += $2} END {for (c in s) print c, s[c]}'
}

one() { # name binary -> a result line
    local name=$1 bin=$2 uri="nbd://127.0.0.1:$PORT/vol0"
    rm -rf "${JDIR:?}"/*
    cdp_site_serve "$bin" "$WAIT"
    taskset -c 1 fio --name=prefill --ioengine=nbd --uri="$uri" --rw=write --bs=1m --iodepth=8 \
        --size=256M >/dev/null
    taskset -c 1 fio --name=warm --ioengine=nbd --uri="$uri" --rw=randwrite --bs=64k --iodepth=8 \
        --size=1G --io_size=1536M >/dev/null
    taskset -c 1 fio --name=m --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 \
        --size=256M --time_based --runtime="$RT" --output-format=json >"$WORK/fio.json" &
    local fpid=$! t=0
    # Until a segment of 4 KiB records was consolidated (see the header).
    # (The log's fields may carry colour codes around the "=".)
    until grep -qP 'consolidated the oldest.*records(\e\[[0-9;]*m)*=(\e\[[0-9;]*m)*\d{5}' "$WORK/log"; do
        sleep 0.2
        t=$((t + 1))
        ((t < (RT - WIN) * 5)) || die "$name: consolidation never reached the 4 KiB writes within RT"
    done
    local n0 n1
    ticks "$PID" >"$WORK/t0"
    n0=$(grep -c "consolidated the oldest" "$WORK/log" || true)
    sleep "$WIN"
    ticks "$PID" >"$WORK/t1"
    n1=$(grep -c "consolidated the oldest" "$WORK/log" || true)
    wait "$fpid"
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
    python3 - "$name" "$WORK/fio.json" "$WORK/t0" "$WORK/t1" "$((n1 - n0))" "$WIN" <<'PY'
import json, sys
name, fj, t0, t1, segs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
win = float(sys.argv[6])
text = open(fj).read()
iops = json.loads(text[text.index("{"):])["jobs"][0]["write"]["iops"]
rd = lambda p: {l.split()[0]: int(l.split()[1]) for l in open(p) if l.strip()}
a, b = rd(t0), rd(t1)
d = {k: b[k] - a.get(k, 0) for k in b}
ret = d.get("cdp-retention", 0)
srv = sum(d.values()) * 10000 / (iops * win)  # ticks of 10 ms -> µs per I/O
print(f"{name}\t{iops:.0f}\t{segs}\t{ret / max(segs, 1):.2f}\t{ret}\t{d.get('cdp-segments', 0)}\t{d.get('reactor-0', 0)}\t{srv:.2f}")
PY
}

echo "cdp_retention_cpu: PAIRS=$PAIRS RT=$RT WIN=$WIN WAIT=$WAIT, journal on $SHM, $(date -u +%FT%TZ)"
: >"$WORK/rows"
for ((i = 1; i <= PAIRS; i++)); do
    # (Not in a pipeline: `one` sets PID for the cleanup, which must see it.)
    one new "$NEW_BIN" >>"$WORK/rows"
    tail -1 "$WORK/rows"
    one old "$OLD_BIN" >>"$WORK/rows"
    tail -1 "$WORK/rows"
done
python3 - "$WORK/rows" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| binary | IOPS | segments in window | retention ticks / segment | retention ticks | segment-thread ticks | reactor ticks | server µs / I/O |")
print("|---|---|---|---|---|---|---|---|")
for name in ("new", "old"):
    r = [x for x in rows if x[0] == name]
    med = lambda i: statistics.median(float(x[i]) for x in r)
    print(f"| {name} | {med(1):.0f} | {med(2):.0f} | {med(3):.2f} | {med(4):.0f} | {med(5):.0f} | {med(6):.0f} | {med(7):.2f} |")
PY
