#!/usr/bin/env bash
# Side-by-side: what continuous data protection costs (docs/cdp-format.md). The same RAM volume
# served by one twinblk site with CDP off, with its journal on the machine's disk, and with its
# journal on RAM (tmpfs, which takes O_DIRECT on Linux >= 6.6); fio's nbd engine, 4 KiB random
# writes at queue depth 1 and 32, and 128 KiB sequential writes at queue depth 32.
#
#   RUNTIME=10 REPS=3 bash benches/cdp_compare.sh
#
# Reported per configuration and point: the MEDIAN over the repetitions of IOPS and of clat
# p50 and p99, the ratio of IOPS to CDP off, and for the CDP runs the journal bytes written per
# byte the host wrote (cdp_status journal_bytes / volume_stats write_bytes, over the whole run
# including fio's ramp). Each repetition starts every configuration fresh (new journal).
# Placement: the server's reactor on SERVER_CPU (default 0), fio on FIO_CPU (default 1); wait =
# adaptive. The server's own threads (CDP's retention and segment threads among them) run where
# the daemon puts them by default, every CPU but the reactor's (so on fio's), or with
# BACKGROUND_CPU=N on CPU N ([reactor] background_cores = [N]; BACKGROUND_CPU=$SERVER_CPU keeps
# the whole server on the reactor's core, every configuration on the same one core). The old
# binary of OLD_BIN must know background_cores to be given BACKGROUND_CPU.
# Not covered yet: the mirrored pair (mirror_compare.sh's setup with [volume.cdp] at both sites).
#
# Environment: RUNTIME (seconds per point, default 10), REPS (3), RAMP (2), BASE_PORT (14800),
# DISK_DIR (where the on-disk journals go, default /var/tmp), RAM_DIR (default /dev/shm),
# CONFIGS (subset/order of: off disk disk-flush ram; each repetition starts one configuration
# later in the list, so none always runs first: session 22 measured the first one of a
# repetition losing at 128 KiB on this host; disk-flush is the journal on disk with
# [volume.cdp] sync = "flush": appends without RWF_DSYNC, made durable by flushes and FUA
# writes), SEGMENT (segment_size, default 256MiB), RETAIN (retention_bytes, default none:
# the journal only grows), WARM (MiB of random 64 KiB writes before each point, after the
# prefill, default 0: with RETAIN, enough to fill the journal to its retention first measures
# the steady state, segments consolidated and recycled while the point runs; it is the steady
# state only once the base copy exists whole: consolidation allocates each of its pages when it
# first reaches one, a fault and a zeroed page each on tmpfs, costly on this VM, so the report
# gives the base copy's allocated share at each point's start, and WARM=4096 covers the 1 GiB
# volume about 98 %; session 24 measured CDP in memory at QD1 costing twice the server CPU of
# CDP off after WARM=1536, and the same as off after WARM=4096), PREZERO=1 (journal segments written with zeroes
# ahead of use: [volume.cdp] prezero), PREFILL=0 skips writing the measured REGION once before
# each point (default 1: no configuration pays for the RAM volume's first touch of its pages),
# REGION (the bytes the measured points and the prefill write, default 256M; a small one, e.g.
# 16M, is a hot-block workload), POINTS (comma-separated "rw bs qd" triples, default
# "randwrite 4k 1,randwrite 4k 32,write 128k 32"), KEEP=1 keeps logs and fio JSON.
# OLD_BIN=/path/to/twinblk adds configurations off@old,
# disk@old, ram@old (name them in CONFIGS) served by that binary, in the same rotation, to
# compare two trees side by side in one run, e.g.
#   OLD_BIN=/tmp/twinblk-before CONFIGS="off ram ram@old" bash benches/cdp_compare.sh Also reported: the server's CPU time (all its threads,
# io_uring workers included, from /proc) per I/O over the measured part (after the ramp).
# Needs: cargo, fio (nbd engine), nbdinfo, taskset, python3. Listens on 127.0.0.1 only; always
# cleans up (servers killed, journals removed).

set -euo pipefail
RUNTIME=${RUNTIME:-10}
REPS=${REPS:-3}
RAMP=${RAMP:-2}
BASE_PORT=${BASE_PORT:-14800}
DISK_DIR=${DISK_DIR:-/var/tmp}
RAM_DIR=${RAM_DIR:-/dev/shm}
CONFIGS=${CONFIGS:-off disk ram}
SERVER_CPU=${SERVER_CPU:-0}
BACKGROUND_CPU=${BACKGROUND_CPU:-}
FIO_CPU=${FIO_CPU:-1}
KEEP=${KEEP:-0}
PREZERO=${PREZERO:-0}
PREFILL=${PREFILL:-1}
SEGMENT=${SEGMENT:-256MiB}
RETAIN=${RETAIN:-}
WARM=${WARM:-0}
REGION=${REGION:-256M}
POINTS=${POINTS:-}
die() { echo "cdp_compare: $*" >&2; exit 1; }
[[ -z $BACKGROUND_CPU || $BACKGROUND_CPU =~ ^[0-9]+$ ]] || die "BACKGROUND_CPU is a CPU number"
[[ $REGION =~ ^[0-9]+[KMG]$ ]] || die "REGION is a size such as 256M or 16M"
[[ $RUNTIME =~ ^[0-9]+$ && $REPS =~ ^[0-9]+$ && $RAMP =~ ^[0-9]+$ && $BASE_PORT =~ ^[0-9]+$ ]] ||
    die "RUNTIME, REPS, RAMP, BASE_PORT must be numbers"
((RUNTIME >= 1 && REPS >= 1)) || die "RUNTIME and REPS must be >= 1"
OLD_BIN=${OLD_BIN:-}
for c in $CONFIGS; do
    case $c in
    off | disk | disk-flush | ram) ;;
    off@old | disk@old | disk-flush@old | ram@old) [[ -x $OLD_BIN ]] || die "config '$c' needs OLD_BIN (an executable)" ;;
    *) die "unknown config '$c'" ;;
    esac
done
for t in fio nbdinfo taskset python3 cargo; do command -v "$t" >/dev/null || die "missing tool: $t"; done
fio --enghelp=nbd >/dev/null 2>&1 || die "fio has no nbd ioengine"

cd "$(dirname "$0")/.."
cargo build --release --quiet --bin twinblk
BIN=$PWD/target/release/twinblk
WORK=$(mktemp -d /tmp/cdp_compare.XXXXXX)
JOURNALS=()
SERVER_PID=""
cleanup() {
    [[ -n $SERVER_PID ]] && kill "$SERVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    for j in "${JOURNALS[@]}"; do rm -rf "$j"; done
    [[ $KEEP == 1 ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

rpc() { # socket method -> JSON result on stdout
    python3 - "$1" "$2" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall((json.dumps({"jsonrpc": "2.0", "id": 1, "method": sys.argv[2]}) + "\n").encode())
buf = b""
while not buf.endswith(b"\n"):
    d = s.recv(65536)
    if not d:
        break
    buf += d
print(json.dumps(json.loads(buf)["result"]))
PY
}

start_server() { # config port -> sets SERVER_PID
    local cfg=$1 port=$2 jdir="" cdp="" bin=$BIN
    [[ $cfg == *@old ]] && bin=$OLD_BIN
    case ${cfg%@old} in
    disk | disk-flush) jdir=$(mktemp -d "$DISK_DIR/cdp_compare.XXXXXX") ;;
    ram) jdir=$(mktemp -d "$RAM_DIR/cdp_compare.XXXXXX") ;;
    esac
    CUR_JDIR=$jdir
    if [[ -n $jdir ]]; then
        JOURNALS+=("$jdir")
        cdp="[volume.cdp]
dir = \"$jdir/vol0\"
segment_size = \"$SEGMENT\"
prezero = $([[ $PREZERO == 1 ]] && echo true || echo false)"
        [[ ${cfg%@old} == disk-flush ]] && cdp+=$'\nsync = "flush"'
        [[ -n $RETAIN ]] && cdp+=$'\n'"retention_bytes = \"$RETAIN\""
    fi
    cat >"$WORK/$cfg.toml" <<CFG
[reactor]
cores = [$SERVER_CPU]
wait = "adaptive"
${BACKGROUND_CPU:+background_cores = [$BACKGROUND_CPU]}
[nbd]
listen = ["127.0.0.1:$port"]
[nvmf]
listen = []
[control]
socket = "$WORK/$cfg.sock"
[[volume]]
name = "vol0"
backend = "malloc"
size = "1GiB"
block_size = 4096
$cdp
CFG
    "$bin" serve --config "$WORK/$cfg.toml" >"$WORK/$cfg.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        nbdinfo "nbd://127.0.0.1:$port/vol0" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "server ($cfg) did not come up: $(tail -5 "$WORK/$cfg.log")"
}

stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
    # Each point's journal goes with its server: kept, RAM journals of several points would
    # fill the machine's memory (tmpfs), and the OOM killer takes the server.
    if [[ -n ${CUR_JDIR:-} ]]; then rm -rf "$CUR_JDIR"; CUR_JDIR=""; fi
}

if [[ -n $POINTS ]]; then
    IFS=, read -r -a POINTS <<<"$POINTS"
else
    POINTS=("randwrite 4k 1" "randwrite 4k 32" "write 128k 32")
fi
RESULTS=$WORK/results.tsv
: >"$RESULTS"
port=$BASE_PORT
read -r -a CFGS <<<"$CONFIGS"
for ((rep = 1; rep <= REPS; rep++)); do
    for ((k = 0; k < ${#CFGS[@]}; k++)); do
        cfg=${CFGS[(k + rep - 1) % ${#CFGS[@]}]}
        for p in "${POINTS[@]}"; do
            read -r rw bs qd <<<"$p"
            port=$((port + 1))
            start_server "$cfg" "$port"
            out=$WORK/$cfg-$rw-$bs-$qd-$rep.json
            if [[ $PREFILL == 1 ]]; then
                # Every configuration writes the measured region once first, so no point pays
                # for the RAM volume's first touch of its pages (a cost of this VM's memory).
                taskset -c "$FIO_CPU" fio --name=prefill --ioengine=nbd \
                    --uri="nbd://127.0.0.1:$port/vol0" --rw=write --bs=1m --iodepth=8 \
                    --size="$REGION" --output-format=json >/dev/null
            fi
            if ((WARM > 0)); then
                taskset -c "$FIO_CPU" fio --name=warm --ioengine=nbd \
                    --uri="nbd://127.0.0.1:$port/vol0" --rw=randwrite --bs=64k --iodepth=8 \
                    --size=1G --io_size="${WARM}M" --output-format=json >/dev/null
            fi
            # How much of the base copy exists when the point starts: consolidation allocates
            # its pages as it first reaches them (a fault and a zeroed page each on tmpfs, a
            # block allocation on a disk), a one-time cost per page that is not the steady
            # state; a WARM that covers the volume a few times over makes it whole first
            # (4096 MiB of 64 KiB writes cover the 1 GiB volume about 98 %).
            base_alloc=""
            if [[ ${cfg%@old} != off && -f $CUR_JDIR/vol0/base.img ]]; then
                base_alloc=$(stat -c '%b %B' "$CUR_JDIR/vol0/base.img" | awk '{printf "%.0f", 100 * $1 * $2 / (1024 * 1024 * 1024)}')
            fi
            taskset -c "$FIO_CPU" fio --name=cdp --ioengine=nbd --uri="nbd://127.0.0.1:$port/vol0" \
                --rw="$rw" --bs="$bs" --iodepth="$qd" --size="$REGION" --time_based \
                --runtime="$RUNTIME" --ramp_time="$RAMP" --output-format=json >"$out" &
            fio_pid=$!
            sleep "$RAMP"
            cpu0=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
            wait "$fio_pid"
            cpu1=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
            ratio=""
            if [[ ${cfg%@old} != off ]]; then
                j=$(rpc "$WORK/$cfg.sock" cdp_status)
                v=$(rpc "$WORK/$cfg.sock" volume_stats)
                ratio=$(python3 -c 'import json,sys; j=json.loads(sys.argv[1])[0]; v=json.loads(sys.argv[2])[0]; print("%.3f" % (j["journal_bytes"]/max(v["write_bytes"],1)))' "$j" "$v")
            fi
            python3 - "$out" "$cfg" "$rw $bs QD$qd" "$ratio" "$((cpu1 - cpu0))" "$(getconf CLK_TCK)" "$RUNTIME" "$base_alloc" >>"$RESULTS" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
w = json.loads(text[text.index("{"):])["jobs"][0]["write"]  # fio's nbd engine prints a line first
pct = w["clat_ns"].get("percentile", {})
# Server CPU (all its threads, io_uring workers included) per I/O over the measured part.
ios = w["iops"] * float(sys.argv[7])
cpu_us = int(sys.argv[5]) * 1e6 / int(sys.argv[6]) / ios if ios else 0
print("\t".join([sys.argv[2], sys.argv[3], "%.0f" % w["iops"],
                 "%.1f" % (pct.get("50.000000", 0) / 1000), "%.1f" % (pct.get("99.000000", 0) / 1000),
                 sys.argv[4], "%.2f" % cpu_us, sys.argv[8]]))
PY
            stop_server
        done
    done
done

echo "cdp_compare: RUNTIME=$RUNTIME REPS=$REPS RAMP=$RAMP PREZERO=$PREZERO PREFILL=$PREFILL SEGMENT=$SEGMENT RETAIN=${RETAIN:-none} WARM=$WARM REGION=$REGION SERVER_CPU=$SERVER_CPU BACKGROUND_CPU=${BACKGROUND_CPU:-default} FIO_CPU=$FIO_CPU, journal on $DISK_DIR (disk) and $RAM_DIR (ram), $(date -u +%F)"
python3 - "$RESULTS" <<'PY'
import sys, statistics
from collections import defaultdict
rows = defaultdict(list)
for line in open(sys.argv[1]):
    cfg, point, iops, p50, p99, ratio, cpu, base = line.rstrip("\n").split("\t")
    rows[(point, cfg)].append((float(iops), float(p50), float(p99), float(ratio) if ratio else None, float(cpu),
                               float(base) if base else None))
points = sorted({p for p, _ in rows}, key=lambda p: (p.split()[0], int(p.split("QD")[1])))
print("| point | config | IOPS | vs off | p50 µs | p99 µs | journal bytes / written byte | server CPU µs / I/O | base copy allocated at start (min-max %) |")
print("|---|---|---|---|---|---|---|---|---|")
for p in points:
    off = rows.get((p, "off"))
    off_iops = statistics.median(r[0] for r in off) if off else None
    for cfg in ("off", "disk", "disk-flush", "ram", "off@old", "disk@old", "disk-flush@old", "ram@old"):
        r = rows.get((p, cfg))
        if not r:
            continue
        iops = statistics.median(x[0] for x in r)
        vs = "%.3f" % (iops / off_iops) if off_iops else "-"
        ratios = [x[3] for x in r if x[3] is not None]
        jb = "%.3f" % statistics.median(ratios) if ratios else "-"
        bases = [x[5] for x in r if x[5] is not None]
        ba = "%.0f-%.0f" % (min(bases), max(bases)) if bases else "-"
        print("| %s | %s | %.0f | %s | %.1f | %.1f | %s | %.2f | %s |" % (
            p, cfg, iops, vs, statistics.median(x[1] for x in r), statistics.median(x[2] for x in r), jb,
            statistics.median(x[4] for x in r), ba))
PY
