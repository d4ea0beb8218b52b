#!/usr/bin/env bash
# A CDP writer whose helper threads get almost no CPU (issue 12: the journal's helpers never
# hold production writes). One twinblk site, a 1 GiB RAM volume with its journal on tmpfs
# (64 MiB segments, retention 512 MiB); CDP's threads (cdp-segments, cdp-retention) reniced
# to 19 and both cores kept busy by a spinning shell each, as on a loaded host; fio's nbd engine
# writes 64 KiB at random at QD8 for RT seconds (a segment every ~0.4 s at full speed). Two
# binaries in turns (NEW, then OLD_BIN), PAIRS times. Reported per run: MiB/s, the largest
# completion latency and the 99.9th percentile. A writer that waits for its segment thread's
# preparation shows seconds-long stalls.
#
#   OLD_BIN=/path/to/old/twinblk PAIRS=2 bash benches/cdp_starved_helper.sh
#
# Environment: OLD_BIN (required), NEW_BIN (default: this tree's release build), PAIRS (2),
# RT (20), PORT (15334), SHM (/dev/shm). Needs fio (nbd engine), nbdinfo, taskset, renice,
# python3. Listens on 127.0.0.1 only; removes its journals.

set -euo pipefail
PAIRS=${PAIRS:-2}
RT=${RT:-20}
PORT=${PORT:-15334}
SHM=${SHM:-/dev/shm}
die() { echo "cdp_starved_helper: $*" >&2; exit 1; }
[[ -x ${OLD_BIN:-} ]] || die "OLD_BIN must name a twinblk binary"
for t in fio nbdinfo taskset renice python3; do command -v "$t" >/dev/null || die "missing tool: $t"; done
cd "$(dirname "$0")/.."
if [[ -z ${NEW_BIN:-} ]]; then
    cargo build --release --quiet --bin twinblk
    NEW_BIN=$PWD/target/release/twinblk
fi
source benches/cdp_site.sh # (the working directory is the repository root here)
WORK=$(mktemp -d /tmp/cdp_starved_helper.XXXXXX)
JDIR=$(mktemp -d "$SHM/cdp_starved_helper.XXXXXX")
PID=""
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null || true
    pkill -f "cdp_starved_helper_spin" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK" "$JDIR"
}
trap cleanup EXIT

one() { # name binary -> a result line
    local name=$1 bin=$2 uri="nbd://127.0.0.1:$PORT/vol0"
    rm -rf "${JDIR:?}"/*
    cdp_site_serve "$bin" interrupt
    local t n=0
    for t in /proc/"$PID"/task/*; do
        case $(cat "$t/comm") in cdp-*) renice -n 19 -p "$(basename "$t")" >/dev/null; n=$((n + 1)) ;; esac
    done
    ((n == 2)) || die "$name: found $n CDP threads, expected 2"
    for c in 0 1; do
        taskset -c "$c" timeout $((RT + 2)) bash -c 'exec -a cdp_starved_helper_spin bash -c "while :; do :; done"' &
    done
    taskset -c 1 fio --name=m --ioengine=nbd --uri="$uri" --rw=randwrite --bs=64k --iodepth=8 \
        --size=1G --time_based --runtime="$RT" --output-format=json >"$WORK/fio.json"
    kill "$PID"
    wait "$PID" 2>/dev/null || true
    PID=""
    pkill -f "cdp_starved_helper_spin" 2>/dev/null || true
    python3 - "$name" "$WORK/fio.json" <<'PY'
import json, sys
t = open(sys.argv[2]).read()
w = json.loads(t[t.index("{"):])["jobs"][0]["write"]
c = w["clat_ns"]
print(f"{sys.argv[1]}\t{w['bw'] / 1024:.0f}\t{c['max'] / 1e6:.0f}\t{c['percentile'].get('99.900000', 0) / 1e6:.0f}")
PY
}

echo "cdp_starved_helper: PAIRS=$PAIRS RT=$RT, journal on $SHM, $(date -u +%FT%TZ)"
: >"$WORK/rows"
for ((i = 1; i <= PAIRS; i++)); do
    one new "$NEW_BIN" >>"$WORK/rows"
    tail -1 "$WORK/rows"
    one old "$OLD_BIN" >>"$WORK/rows"
    tail -1 "$WORK/rows"
done
python3 - "$WORK/rows" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]) if l.strip()]
print("| binary | MiB/s | max completion latency ms | p99.9 ms |")
print("|---|---:|---:|---:|")
for name in ("new", "old"):
    r = [x for x in rows if x[0] == name]
    med = lambda i: statistics.median(float(x[i]) for x in r)
    print(f"| {name} (median of {len(r)}) | {med(1):.0f} | {med(2):.0f} | {med(3):.0f} |")
PY
