#!/usr/bin/env bash
# Where a mirrored 4 KiB write's server CPU goes at QD1 (or IODEPTH): user and system time per write at each
# site (from /proc/<pid>/stat, in clock ticks: 10 ms each, so use N of 40,000 or more; fio goes
# round its 256 MiB region again until N writes are made: io_size), and the
# system calls and context switches per write of each site's reactor thread (perf stat). Beside
# benches/mirror_compare.sh (IOPS, latency, total CPU) and benches/mirror_instructions.sh
# (user-space instructions): this one says how much of the CPU the datapath's own code could
# save at all.
#
#   N=40000 REPS=3 bash benches/mirror_cpu_split.sh
#   OLD_BIN=/work/before/target/release/twinblk N=40000 REPS=3 bash benches/mirror_cpu_split.sh
#   IODEPTH=32 N=400000 OLD_BIN=... bash benches/mirror_cpu_split.sh   (fio's queue depth)
#
# For each repetition, this tree's release build and then OLD_BIN's (if given), in turns: both
# sites start with a 1 GiB RAM volume mirrored on loopback (a leads, b follows), both reactors
# on core 0 with wait = "interrupt"; fio's nbd engine on core 1 writes 3,000 random 4 KiB
# writes at that depth to site a (warm-up), then N more while perf stat counts both processes. Printed
# per run and as medians per binary: user and system µs per write at a and b, their sum, and
# each site's reactor thread's system calls and context switches per write (a, then b), and the
# TCP segments each site sent per write on the replication link (from ss: all, and those with
# data; the rest are pure acknowledgements, whose receive path the sender pays on loopback;
# fio's connection has closed when they are counted, so it is not in them).
#
# Environment: N, IODEPTH (default 1), REPS, OLD_BIN, BASE_PORT (default 14600). Needs fio (nbd engine), nbdinfo
# (libnbd-bin), perf, python3. Listens on 127.0.0.1 only; always cleans up.

set -euo pipefail
N=${N:-40000}
IODEPTH=${IODEPTH:-1}
REPS=${REPS:-3}
OLD_BIN=${OLD_BIN:-}
BASE_PORT=${BASE_PORT:-14600}
[[ $N =~ ^[0-9]+$ && $N -ge 1000 && $IODEPTH =~ ^[0-9]+$ && $IODEPTH -ge 1 && $REPS =~ ^[0-9]+$ && $REPS -ge 1 && $BASE_PORT =~ ^[0-9]+$ ]] ||
    { echo "mirror_cpu_split: N (>= 1000), IODEPTH (>= 1), REPS (>= 1) and BASE_PORT must be numbers" >&2; exit 1; }
for tool in fio nbdinfo perf python3 taskset; do
    command -v "$tool" >/dev/null || { echo "mirror_cpu_split: needs $tool" >&2; exit 1; }
done
if [[ -n $OLD_BIN ]]; then
    [[ -x $OLD_BIN ]] || { echo "mirror_cpu_split: OLD_BIN=$OLD_BIN is not executable" >&2; exit 1; }
fi
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin twinblk
NEW_BIN=$PWD/target/release/twinblk
WORK=$(mktemp -d /tmp/mirror_cpu_split.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/link.key")

SCRIPT=mirror_cpu_split
# shellcheck source=benches/ram_pair.sh
source benches/ram_pair.sh # (the working directory is the repository root here)

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# TCP segments sent by PID's sockets so far, all of them and those with data (ss's segs_out and
# data_segs_out summed; a pure acknowledgement is the difference).
segs() {
    ss -tinpH 2>/dev/null | python3 -c '
import re, sys
pid, segs, data, mine = sys.argv[1], 0, 0, False
for line in sys.stdin:
    if "users:(" in line:
        mine = re.search(r"pid=" + pid + r",", line) is not None
    elif mine:
        m = re.search(r"\bsegs_out:(\d+)", line)
        d = re.search(r"\bdata_segs_out:(\d+)", line)
        segs += int(m.group(1)) if m else 0
        data += int(d.group(1)) if d else 0
print(segs, data)' "$1"
}

port=$BASE_PORT
RESULTS=$WORK/results.txt
run() { # label bin
    local label=$1 bin=$2 key pa pb ra rb a b ok
    key=$(key_line "$bin")
    pa=$port pb=$((port + 1)) ra=$((port + 2)) rb=$((port + 3))
    port=$((port + 4))
    site_cfg a b "$pa" "$ra" "$rb" "$key"
    site_cfg b a "$pb" "$rb" "$ra" "$key"
    "$bin" serve --config "$WORK/a.toml" >"$WORK/$label.a.log" 2>&1 &
    a=$!
    "$bin" serve --config "$WORK/b.toml" >"$WORK/$label.b.log" 2>&1 &
    b=$!
    PIDS=("$a" "$b")
    ok=0
    for _ in $(seq 150); do
        if nbdinfo "nbd://127.0.0.1:$pa/vol0" >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    [[ $ok == 1 ]] || { echo "mirror_cpu_split: site a did not serve: $(tail -3 "$WORK/$label.a.log")" >&2; exit 1; }
    local args=(--ioengine=nbd "--uri=nbd://127.0.0.1:$pa/vol0" --rw=randwrite --bs=4k
        "--iodepth=$IODEPTH" --size=256M)
    # (The session may still be starting: the warm-up retries until its writes succeed.)
    for _ in $(seq 50); do
        taskset -c 1 fio --name=warm "${args[@]}" --number_ios=3000 >/dev/null 2>&1 && break
        sleep 0.5
    done
    local au0 as0 bu0 bs0 au1 as1 bu1 bs1
    read -r au0 as0 < <(ticks "$a")
    read -r bu0 bs0 < <(ticks "$b")
    local sa0 da0 sb0 db0 sa1 da1 sb1 db1
    read -r sa0 da0 < <(segs "$a")
    read -r sb0 db0 < <(segs "$b")
    perf stat --per-thread -e raw_syscalls:sys_enter,context-switches -p "$a,$b" \
        -o "$WORK/$label.perf" -- taskset -c 1 fio --name=count "${args[@]}" --number_ios="$N" \
        --io_size="$((N * 4))k" --output-format=json >"$WORK/$label.fio" 2>&1
    read -r au1 as1 < <(ticks "$a")
    read -r bu1 bs1 < <(ticks "$b")
    read -r sa1 da1 < <(segs "$a")
    read -r sb1 db1 < <(segs "$b")
    local ta tb
    ta=$(ls "/proc/$a/task" | tr '\n' ,)
    tb=$(ls "/proc/$b/task" | tr '\n' ,)
    kill -9 "$a" "$b" 2>/dev/null || true
    wait "$a" "$b" 2>/dev/null || true
    PIDS=()
    python3 - "$label" "$N" "$(getconf CLK_TCK)" "$au0" "$as0" "$au1" "$as1" "$bu0" "$bs0" \
        "$bu1" "$bs1" "$ta" "$tb" "$WORK/$label.perf" "$WORK/$label.fio" \
        "$((sa1 - sa0)) $((da1 - da0)) $((sb1 - sb0)) $((db1 - db0))" >>"$RESULTS" <<'PY'
import re, sys
import json
label, n, tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# The writes fio really made: at most one per 4 KiB block of its 256 MiB region (65,536), so
# a larger N is not what was done.
t = open(sys.argv[15]).read()
done = json.loads(t[t.index("{"):])["jobs"][0]["write"]["total_ios"]
if done != n:
    print(f"mirror_cpu_split: fio made {done} writes, not N={n}: per-write figures use {done}", file=sys.stderr)
n = done
au0, as0, au1, as1, bu0, bs0, bu1, bs1 = map(int, sys.argv[4:12])
us = lambda d: d * 1e6 / tck / n
# Per thread (perf names each comm-tid); the reactors are the threads named reactor-*.
counts = {}
for line in open(sys.argv[14]):
    m = re.match(r"\s*(\S+)-(\d+)\s+([\d,]+)\s+(\S+)", line)
    if m:
        counts.setdefault(m.group(1) + "-" + m.group(2), {})[m.group(4)] = int(m.group(3).replace(",", ""))
# Each site's reactor: its thread named reactor-* (site a's first).
tasks = [set(sys.argv[12].strip(",").split(",")), set(sys.argv[13].strip(",").split(","))]
reactors = [next((k for k in counts if k.startswith("reactor-") and k.rsplit("-", 1)[1] in t), None) for t in tasks]
row = [us(au1 - au0), us(as1 - as0), us(bu1 - bu0), us(bs1 - bs0)]
sc = [counts.get(r, {}).get("raw_syscalls:sys_enter", 0) / n for r in reactors]
cs = [counts.get(r, {}).get("context-switches", 0) / n for r in reactors]
# TCP segments sent per write by each site: all, then those carrying data (a, then b).
sg = [int(x) / n for x in sys.argv[16].split()]
print(label, *(f"{x:.2f}" for x in row), " ".join(f"{x:.2f}" for x in sc), "|", " ".join(f"{x:.2f}" for x in cs),
      "|", f"{sg[0]:.2f} {sg[1]:.2f} {sg[2]:.2f} {sg[3]:.2f}")
PY
    tail -1 "$RESULTS" >&2
}

echo "mirror_cpu_split: N=$N IODEPTH=$IODEPTH REPS=$REPS, $(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq "$REPS"); do
    run new "$NEW_BIN"
    [[ -n $OLD_BIN ]] && run old "$OLD_BIN"
done
python3 - "$RESULTS" "$N" "$IODEPTH" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    p = line.split()
    rows.setdefault(p[0], []).append(p[1:])
print(f"mirror_cpu_split: mirrored 4 KiB randwrite QD{sys.argv[3]}, N={sys.argv[2]} per run, medians of {len(next(iter(rows.values())))} runs")
print("| binary | a user µs | a sys µs | b user µs | b sys µs | total µs / write | syscalls / write (a b) | context switches / write (a b) | link TCP segments sent / write, (with data) (a b) |")
print("|---|---|---|---|---|---|---|---|---|")
med = {}
for label, rs in rows.items():
    cols = [statistics.median(float(r[i]) for r in rs) for i in range(4)]
    bar = rs[0].index("|")
    bar2 = rs[0].index("|", bar + 1)
    sc = [statistics.median(float(r[i]) for r in rs) for i in range(4, bar)]
    cs = [statistics.median(float(r[i]) for r in rs) for i in range(bar + 1, bar2)]
    sg = [statistics.median(float(r[i]) for r in rs) for i in range(bar2 + 1, len(rs[0]))]
    med[label] = sum(cols)
    print(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cols) + f" | {sum(cols):.2f} | "
          + " ".join(f"{x:.2f}" for x in sc) + " | " + " ".join(f"{x:.2f}" for x in cs) + " | "
          + f"{sg[0]:.2f} ({sg[1]:.2f}) {sg[2]:.2f} ({sg[3]:.2f}) |")
    for r in rs:
        print(f"  {label} run: " + " ".join(r))
if "old" in med:
    print(f"total CPU per write, new/old: {med['new'] / med['old']:.3f}")
PY
