#!/usr/bin/env bash
# How long a point in time takes to restore and to open (issue 12's goals: a 1 GiB volume
# restored to a point in under 10 s; a point-in-time view serving in under 1 s).
#
#   REPS=3 bash benches/cdp_restore.sh
#
# One `twinblk serve` with a file-backed volume of SIZE_MIB (default 1024) whose CDP journal is
# in JOURNAL_DIR (default /var/tmp: the machine's disk). fio's nbd engine writes the whole volume
# once (1 MiB sequential) and then RANDOM_MIB (default 256) of 4 KiB random writes; the server is
# stopped. Then, REPS times each, medians reported:
# - restore: `twinblk cdp restore --seq P` to a new file, P = the middle of the random writes
#   (so the whole history up to P is replayed: the base copy plus 1 GiB + half the random
#   writes), timed from start to exit (the file is fsynced before the command exits);
# - view: `twinblk cdp view --seq P` started, timed until it serves (its banner: history read,
#   extent map built, listeners bound) and until `nbdinfo` gets an answer from its export
#   (nbdinfo's own start, about 0.2 s, included), then stopped.
# The first restore and the first view run right after the server stopped (page cache warm
# with what it wrote; the journal is written with O_DIRECT, so not with the segments).
# The restored file is checked against a view read of the same point (qemu-img compare).
# Needs: cargo, fio (nbd engine), nbdinfo, qemu-img, python3. Listens on 127.0.0.1 only; always
# cleans up.

set -euo pipefail
REPS=${REPS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
RANDOM_MIB=${RANDOM_MIB:-256}
JOURNAL_DIR=${JOURNAL_DIR:-/var/tmp}
PORT=${PORT:-14950}
VIEW_PORT=${VIEW_PORT:-14951}
die() { echo "cdp_restore: $*" >&2; exit 1; }
[[ $REPS =~ ^[0-9]+$ && $SIZE_MIB =~ ^[0-9]+$ && $RANDOM_MIB =~ ^[0-9]+$ ]] || die "REPS, SIZE_MIB, RANDOM_MIB must be numbers"
for t in fio nbdinfo qemu-img python3 cargo; do command -v "$t" >/dev/null || die "missing tool: $t"; done

cd "$(dirname "$0")/.."
cargo build --release --quiet --bin twinblk
BIN=$PWD/target/release/twinblk
WORK=$(mktemp -d "$JOURNAL_DIR/cdp_restore.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

truncate -s "${SIZE_MIB}M" "$WORK/vol.img"
cat >"$WORK/site.toml" <<CFG
[reactor]
cores = [0]
wait = "adaptive"
[nbd]
listen = ["127.0.0.1:$PORT"]
[nvmf]
listen = []
[control]
socket = "$WORK/site.sock"
[[volume]]
name = "vol0"
backend = "uring"
path = "$WORK/vol.img"
size = "${SIZE_MIB}MiB"
block_size = 4096
[volume.cdp]
dir = "$WORK/cdp"
segment_size = "256MiB"
CFG
"$BIN" serve --config "$WORK/site.toml" >"$WORK/site.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 100); do nbdinfo "nbd://127.0.0.1:$PORT/vol0" >/dev/null 2>&1 && break; sleep 0.1; done
fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/vol0" --rw=write --bs=1m --iodepth=8 \
    --size="${SIZE_MIB}M" --output-format=json >/dev/null
fio --name=rand --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/vol0" --rw=randwrite --bs=4k \
    --iodepth=32 --size="${SIZE_MIB}M" --io_size="${RANDOM_MIB}M" --output-format=json >/dev/null
kill -TERM "$SERVER"
wait "$SERVER" || true
"$BIN" cdp window --dir "$WORK/cdp" >"$WORK/window.txt"
LAST=$(python3 -c '
import re, sys
t = open(sys.argv[1]).read()
m = re.findall(r"sequence \d+\.\.=(\d+)", t) or re.findall(r"seq\D+(\d+)", t)
print(m[-1] if m else "")' "$WORK/window.txt")
[[ -n $LAST ]] || die "cannot read the window: $(cat "$WORK/window.txt")"
FILL_RECORDS=$SIZE_MIB
P=$((FILL_RECORDS + (LAST - FILL_RECORDS) / 2))
echo "cdp_restore: ${SIZE_MIB} MiB volume, ${RANDOM_MIB} MiB of random 4 KiB writes, journal in $JOURNAL_DIR, history up to sequence $LAST, point $P, $(date -u +%F)"
du -sh "$WORK/cdp" | awk '{print "journal directory: " $1}'

restore_s=()
view_s=()
answer_s=()
for ((r = 1; r <= REPS; r++)); do
    rm -f "$WORK/restored.img"
    sync
    t0=$(date +%s.%N)
    "$BIN" cdp restore --dir "$WORK/cdp" --out "$WORK/restored.img" --seq "$P" 2>"$WORK/restore.log"
    t1=$(date +%s.%N)
    restore_s+=("$(python3 -c "print('%.2f' % ($t1 - $t0))")")
    t0=$(date +%s.%N)
    "$BIN" cdp view --dir "$WORK/cdp" --seq "$P" --name view --nbd "127.0.0.1:$VIEW_PORT" \
        >"$WORK/view.log" 2>&1 &
    VIEW=$!
    PIDS+=("$VIEW")
    ok=0
    for _ in $(seq 5000); do
        if grep -q "Ctrl-C" "$WORK/view.log"; then ok=1; break; fi
        sleep 0.002
    done
    t1=$(date +%s.%N)
    ((ok)) || die "the view did not serve: $(tail -3 "$WORK/view.log")"
    ok=0
    for _ in $(seq 2000); do
        if nbdinfo "nbd://127.0.0.1:$VIEW_PORT/view" >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.005
    done
    t2=$(date +%s.%N)
    ((ok)) || die "the view did not answer: $(tail -3 "$WORK/view.log")"
    view_s+=("$(python3 -c "print('%.3f' % ($t1 - $t0))")")
    answer_s+=("$(python3 -c "print('%.3f' % ($t2 - $t0))")")
    if ((r == 1)); then
        qemu-img compare -f raw -F raw "$WORK/restored.img" "nbd://127.0.0.1:$VIEW_PORT/view" >/dev/null ||
            die "the restored file and the view of the same point differ"
        echo "restored file = view of the same point (qemu-img compare)"
    fi
    kill -INT "$VIEW"
    wait "$VIEW" || true
done
python3 - "${restore_s[*]}" "${view_s[*]}" "${answer_s[*]}" <<'PY'
import statistics, sys
r = [float(x) for x in sys.argv[1].split()]
v = [float(x) for x in sys.argv[2].split()]
a = [float(x) for x in sys.argv[3].split()]
print("| what | runs (s) | median (s) | goal |")
print("|---|---|---|---|")
print("| restore to a new file | %s | %.2f | < 10 s |" % (", ".join("%.2f" % x for x in r), statistics.median(r)))
print("| view open (start to serving: its listeners bound) | %s | %.3f | < 1 s |" % (", ".join("%.3f" % x for x in v), statistics.median(v)))
print("| view open (start to nbdinfo's first answer, nbdinfo's own start included) | %s | %.3f | - |" % (", ".join("%.3f" % x for x in a), statistics.median(a)))
PY
