#!/usr/bin/env bash
# How long a daemon killed with kill -9 takes to recover a volume's CDP history at its next
# start (part of a site's recovery time after a crash): this tree's release build against
# OLD_BIN, in turns.
#
#   REPS=5 bash benches/cdp_start.sh
#   OLD_BIN=/tmp/twinblk-before REPS=5 bash benches/cdp_start.sh
#
# Each run: a 256 MiB file volume in DIR with [volume.cdp] (segment_size SEGMENT, journal in
# DIR), WRITE_MIB MiB of 64 KiB writes through NBD (nbdcopy), kill -9, then a new daemon on
# the same files; reported: ms from the new daemon's start to its log line "cdp: history
# recovered" (the log's own timestamp against the wall clock read just before the start),
# per run and the median per binary. The active segment's unwritten rest is what recovery
# searches for the log's end (docs/cdp-format.md, "Torn tail").
#
# Environment: REPS (default 5), OLD_BIN, SEGMENT (default 64MiB), WRITE_MIB (default 8),
# DIR (default /var/tmp), BASE_PORT (default 15200). Needs nbdcopy and nbdinfo (libnbd-bin),
# python3. Listens on 127.0.0.1 only; always cleans up.

set -euo pipefail
REPS=${REPS:-5}
OLD_BIN=${OLD_BIN:-}
SEGMENT=${SEGMENT:-64MiB}
WRITE_MIB=${WRITE_MIB:-8}
DIR=${DIR:-/var/tmp}
BASE_PORT=${BASE_PORT:-15200}
die() { echo "cdp_start: $*" >&2; exit 1; }
[[ $REPS =~ ^[0-9]+$ && $REPS -ge 1 && $WRITE_MIB =~ ^[0-9]+$ && $WRITE_MIB -ge 1 && $WRITE_MIB -le 200 && $BASE_PORT =~ ^[0-9]+$ ]] ||
    die "REPS (>= 1), WRITE_MIB (1 to 200) and BASE_PORT must be numbers"
[[ -z $OLD_BIN || -x $OLD_BIN ]] || die "OLD_BIN=$OLD_BIN is not executable"
for tool in nbdcopy nbdinfo python3; do
    command -v "$tool" >/dev/null || die "needs $tool"
done
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin twinblk
NEW_BIN=$PWD/target/release/twinblk
WORK=$(mktemp -d "$DIR/cdp_start.XXXXXX")
PID=
cleanup() {
    [[ -n $PID ]] && kill -9 "$PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
head -c "$((WRITE_MIB << 20))" /dev/urandom >"$WORK/data"

port=$BASE_PORT
RESULTS=$WORK/results.txt
run() { # label bin
    local label=$1 bin=$2 d=$WORK/run ok t0
    rm -rf "$d" && mkdir -p "$d/j"
    truncate -s 256M "$d/v.img"
    cat >"$d/cfg.toml" <<CFG
[reactor]
cores = [0]
wait = "interrupt"
[nbd]
listen = ["127.0.0.1:$port"]
[nvmf]
listen = []
[[volume]]
name = "v"
backend = "uring"
size = "256MiB"
path = "$d/v.img"
[volume.cdp]
dir = "$d/j"
segment_size = "$SEGMENT"
CFG
    "$bin" serve --config "$d/cfg.toml" >"$d/first.log" 2>&1 &
    PID=$!
    ok=0
    for _ in $(seq 300); do
        if nbdinfo "nbd://127.0.0.1:$port/v" >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.05
    done
    [[ $ok == 1 ]] || die "$label: the first daemon did not serve: $(tail -3 "$d/first.log")"
    nbdcopy --request-size=65536 "$WORK/data" "nbd://127.0.0.1:$port/v"
    kill -9 "$PID"
    wait "$PID" 2>/dev/null || true
    t0=$(date +%s.%N)
    "$bin" serve --config "$d/cfg.toml" >"$d/second.log" 2>&1 &
    PID=$!
    ok=0
    for _ in $(seq 600); do
        if grep -q "history recovered" "$d/second.log"; then ok=1; break; fi
        sleep 0.05
    done
    [[ $ok == 1 ]] || die "$label: no 'history recovered' after the restart: $(tail -3 "$d/second.log")"
    kill -9 "$PID"
    wait "$PID" 2>/dev/null || true
    PID=
    python3 - "$label" "$t0" "$d/second.log" >>"$RESULTS" <<'PY'
import datetime, re, sys
label, t0, log = sys.argv[1], float(sys.argv[2]), sys.argv[3]
for line in open(log):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if "history recovered" in line:
        ts = line.split()[0].rstrip("Z")
        at = datetime.datetime.fromisoformat(ts[:26]).replace(tzinfo=datetime.timezone.utc).timestamp()
        print(label, f"{(at - t0) * 1000:.1f}")
        break
PY
    tail -1 "$RESULTS" >&2
    port=$((port + 1))
}

echo "cdp_start: SEGMENT=$SEGMENT WRITE_MIB=$WRITE_MIB DIR=$DIR REPS=$REPS, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for _ in $(seq "$REPS"); do
    run new "$NEW_BIN"
    [[ -n $OLD_BIN ]] && run old "$OLD_BIN"
done
python3 - "$RESULTS" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    label, ms = line.split()
    rows.setdefault(label, []).append(float(ms))
for label, ms in rows.items():
    print(f"{label}: history recovered {statistics.median(ms):.1f} ms after the start (median of {len(ms)}; runs: {' '.join(f'{m:.1f}' for m in ms)})")
if "old" in rows:
    print(f"new/old: {statistics.median(rows['new']) / statistics.median(rows['old']):.3f}")
PY
