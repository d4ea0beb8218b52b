#!/usr/bin/env bash
# Side-by-side NBD benchmark: twinblk (poll, adaptive) vs nbdkit memory, qemu-nbd (raw file on
# /dev/shm) and the nbdkit null plugin (the ceiling of fio's single-threaded NBD client).
#
#   RUNTIME=10 REPS=3 bash benches/nbd_compare.sh
#
# Every point: one fio job, ioengine=nbd (libnbd), 4 KiB, randread / randwrite, iodepth 1 and 32,
# --size=256M (the same 256 MiB working set on every server). Servers are pinned to core 0, fio to
# core 1, all on 127.0.0.1. For each repetition every server is started fresh, waited for with
# nbdinfo, filled over the 256 MiB region with a sequential write pass (so reads hit written data
# everywhere), measured, and stopped. The server order is rotated per repetition so slow drift on
# a noisy machine does not always land on the same server. The report gives the MEDIAN of the
# repetitions for each metric of each point (IOPS, clat p50, clat p99; each median taken
# independently).
#
# Environment:
#   RUNTIME    seconds measured per point (default 10)
#   REPS       repetitions per point (default 3)
#   RAMP       fio ramp_time seconds before each measurement (default 2)
#   BASE_PORT  first TCP port (default 10900); ports BASE_PORT .. BASE_PORT+10*REPS+9 are used
#   SERVERS    subset/order of: twinblk-poll twinblk-adaptive nbdkit-memory qemu-nbd nbdkit-null
#   SERVER_CPU / FIO_CPU  cores for servers / fio (default 0 / 1)
#   KEEP=1     keep the raw fio JSON and server logs (the directory is printed)
#   IDLE_WAIT  before each server start, wait up to this many seconds for the machine to be idle
#              (all-CPU busy <= IDLE_MAX %, default 10, sampled over 1 s); default 300. On timeout
#              the run goes on and the report says so. The background load seen is reported.
#
# Needs: cargo, fio (with the nbd engine), nbdkit (memory, null), qemu-nbd, nbdinfo, taskset,
# python3. Servers listen on 127.0.0.1 only and are always killed on exit (trap).

set -euo pipefail

RUNTIME=${RUNTIME:-10}
REPS=${REPS:-3}
RAMP=${RAMP:-2}
BASE_PORT=${BASE_PORT:-10900}
SERVERS=${SERVERS:-"twinblk-poll twinblk-adaptive nbdkit-memory qemu-nbd nbdkit-null"}
SERVER_CPU=${SERVER_CPU:-0}
FIO_CPU=${FIO_CPU:-1}
KEEP=${KEEP:-0}
IDLE_WAIT=${IDLE_WAIT:-300}
IDLE_MAX=${IDLE_MAX:-10}
SIZE=256M
BS=4k
RWS="randread randwrite"
QDS="1 32"

die() { echo "nbd_compare: $*" >&2; exit 1; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_uint "$RUNTIME" && ((RUNTIME >= 1 && RUNTIME <= 3600)) || die "RUNTIME must be 1..3600"
is_uint "$REPS" && ((REPS >= 1 && REPS <= 50)) || die "REPS must be 1..50"
is_uint "$RAMP" && ((RAMP <= 600)) || die "RAMP must be 0..600"
is_uint "$BASE_PORT" && ((BASE_PORT >= 1024 && BASE_PORT + 10 * REPS + 10 < 65536)) ||
    die "bad BASE_PORT"
is_uint "$SERVER_CPU" && is_uint "$FIO_CPU" || die "bad SERVER_CPU/FIO_CPU"
is_uint "$IDLE_WAIT" && ((IDLE_WAIT <= 3600)) || die "IDLE_WAIT must be 0..3600"
is_uint "$IDLE_MAX" && ((IDLE_MAX <= 100)) || die "IDLE_MAX must be 0..100"
for s in $SERVERS; do
    case $s in
    twinblk-poll | twinblk-adaptive | nbdkit-memory | qemu-nbd | nbdkit-null) ;;
    *) die "unknown server '$s'" ;;
    esac
done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
INVOCATION="RUNTIME=$RUNTIME REPS=$REPS RAMP=$RAMP BASE_PORT=$BASE_PORT bash benches/nbd_compare.sh"
if [[ $SERVERS != "twinblk-poll twinblk-adaptive nbdkit-memory qemu-nbd nbdkit-null" ]]; then
    INVOCATION="SERVERS='$SERVERS' $INVOCATION"
fi

for t in fio nbdkit qemu-nbd nbdinfo taskset python3 timeout cargo; do
    command -v "$t" >/dev/null || die "missing tool: $t"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "fio has no nbd ioengine"
NCPU=$(nproc)
((SERVER_CPU < NCPU && FIO_CPU < NCPU)) || die "need cores $SERVER_CPU and $FIO_CPU (nproc=$NCPU)"

# ---- state and cleanup ----------------------------------------------------------------------
WORK=$(mktemp -d /tmp/nbd_compare.XXXXXX)
SHM_FILE=/dev/shm/nbd_compare.$$.raw
SERVER_PID=""

stop_server() {
    local pid=$SERVER_PID i
    [[ -n $pid ]] || return 0
    SERVER_PID=""
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do # up to 10 s
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "nbd_compare: server pid $pid ignored SIGTERM for 10 s, sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_server
    rm -f "$SHM_FILE"
    if [[ $KEEP == 1 ]]; then
        echo "nbd_compare: raw results kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- build twinblk ------------------------------------------------------------------------------
echo "nbd_compare: building twinblk (cargo build --release -p twinblk-datapath)" >&2
(cd "$ROOT" && cargo build --release -p twinblk-datapath >&2) || die "cargo build failed"
TWINBLK=$ROOT/target/release/twinblk
[[ -x $TWINBLK ]] || die "no $TWINBLK after build"

# The CLI's `--control-socket ''` is rejected by clap (empty value), so the control socket is
# switched off through a config file instead; the volume is the same as the built-in default.
TB_CONF=$WORK/twinblk.toml
cat >"$TB_CONF" <<'EOF'
[control]
socket = ""

[[volume]]
name = "vol0"
backend = "malloc"
size = "1GiB"
EOF

# ---- servers ------------------------------------------------------------------------------------
port_busy() { ss -Htln "sport = :$1" 2>/dev/null | grep -q .; }

# start_server NAME PORT LOG -> sets SERVER_PID, URI
start_server() {
    local name=$1 port=$2 log=$3
    port_busy "$port" && die "port $port already in use"
    URI="nbd://127.0.0.1:$port/vol0"
    case $name in
    twinblk-poll | twinblk-adaptive)
        taskset -c "$SERVER_CPU" "$TWINBLK" serve -c "$TB_CONF" --nbd-listen "127.0.0.1:$port" \
            --cores "$SERVER_CPU" --wait "${name#twinblk-}" >"$log" 2>&1 &
        ;;
    nbdkit-memory)
        taskset -c "$SERVER_CPU" nbdkit -f -i 127.0.0.1 -p "$port" -e vol0 memory size=1G \
            >"$log" 2>&1 &
        ;;
    nbdkit-null)
        taskset -c "$SERVER_CPU" nbdkit -f -i 127.0.0.1 -p "$port" -e vol0 null size=1G \
            >"$log" 2>&1 &
        ;;
    qemu-nbd)
        rm -f "$SHM_FILE"
        truncate -s 1G "$SHM_FILE"
        taskset -c "$SERVER_CPU" qemu-nbd -f raw -b 127.0.0.1 -p "$port" -x vol0 -t \
            --cache=writeback --aio=threads "$SHM_FILE" >"$log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    local i
    for ((i = 0; i < 150; i++)); do # up to ~15 s
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            cat "$log" >&2
            die "$name exited during start-up"
        fi
        if timeout 2 nbdinfo --size "$URI" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    cat "$log" >&2
    die "$name did not answer nbdinfo on $URI within 15 s"
}

# ---- background load ---------------------------------------------------------------------------
# busy_pct: percentage of all CPU time that was busy (not idle/iowait) over one second.
busy_pct() {
    local a b
    a=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6; exit}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6; exit}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN{split(a,x," "); split(b,y," "); bu=y[1]-x[1]; id=y[2]-x[2];
        t=bu+id; printf "%d\n", (t>0 ? 100*bu/t + 0.5 : 0)}'
}

BG_MAX=0        # highest background busy% seen just before a server start
BG_TIMEOUTS=0   # server starts that went ahead on a busy machine
wait_idle() {
    local b i
    b=$(busy_pct)
    for ((i = 1; i < IDLE_WAIT && b > IDLE_MAX; i++)); do
        ((i % 30 == 1)) && echo "nbd_compare: machine busy (${b}% of all CPUs), waiting (up to ${IDLE_WAIT}s)" >&2
        b=$(busy_pct)
    done
    if ((b > IDLE_MAX)); then
        BG_TIMEOUTS=$((BG_TIMEOUTS + 1))
        echo "nbd_compare: WARNING: still ${b}% busy, going on" >&2
    fi
    ((b > BG_MAX)) && BG_MAX=$b
    return 0
}

# ---- fio ----------------------------------------------------------------------------------------
# (engine options such as --uri must come after --ioengine)
FIO_COMMON=(--ioengine=nbd --bs=$BS --size=$SIZE --numjobs=1 --output-format=json)

# fill: sequential 1 MiB writes over the whole 256 MiB region.
fill() {
    local out=$1
    timeout 300 taskset -c "$FIO_CPU" fio --name=fill --ioengine=nbd --uri="$URI" --rw=write \
        --bs=1M --iodepth=8 --size=$SIZE --numjobs=1 --output-format=json --output="$out" \
        >/dev/null 2>&1 || die "fill pass failed on $URI (see $out)"
}

# point RW QD OUT: one measurement. Failure is recorded (no JSON), not fatal.
point() {
    local rw=$1 qd=$2 out=$3
    if ! timeout $((RUNTIME + RAMP + 60)) taskset -c "$FIO_CPU" fio --name=p \
        "${FIO_COMMON[@]}" --uri="$URI" --rw="$rw" --iodepth="$qd" --norandommap --randrepeat=0 \
        --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --percentile_list=50:99 \
        --output="$out" >"$out.log" 2>&1; then
        echo "nbd_compare: fio $rw qd$qd FAILED on $URI" >&2
        mv -f "$out" "$out.failed" 2>/dev/null || true
    fi
}

# ---- run ----------------------------------------------------------------------------------------
read -r -a SRV <<<"$SERVERS"
NS=${#SRV[@]}
NPOINTS=$((NS * REPS * 4))
echo "nbd_compare: $NS servers x 4 points x $REPS reps x (${RUNTIME}s + ${RAMP}s ramp)" \
    "~ $((NPOINTS * (RUNTIME + RAMP) / 60 + 1)) min" >&2
DATE_START=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
n=0
for ((rep = 0; rep < REPS; rep++)); do
    for ((k = 0; k < NS; k++)); do
        idx=$(((k + rep) % NS))
        name=${SRV[$idx]}
        port=$((BASE_PORT + 10 * rep + idx))
        wait_idle
        start_server "$name" "$port" "$WORK/$name.rep$rep.log"
        fill "$WORK/$name.rep$rep.fill.json"
        for rw in $RWS; do
            for qd in $QDS; do
                n=$((n + 1))
                echo "nbd_compare: [$n/$NPOINTS] rep $((rep + 1))/$REPS $name $rw qd$qd" >&2
                point "$rw" "$qd" "$WORK/$name.$rw.qd$qd.rep$rep.json"
            done
        done
        stop_server
        rm -f "$SHM_FILE"
    done
done
DATE_END=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- report -------------------------------------------------------------------------------------
CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
{
    echo "## NBD front end vs peers"
    echo
    echo "- Command: \`$INVOCATION\`"
    echo "- Machine: nproc=$NCPU, CPU: ${CPU_MODEL:-unknown}, kernel $(uname -r)"
    echo "- Date: $DATE_START .. $DATE_END"
    echo "- Tools: $(fio --version), $(nbdkit --version 2>&1 | head -1), $(qemu-nbd --version | head -1), twinblk $("$TWINBLK" --version | awk '{print $2}') ($(sha256sum "$TWINBLK" | cut -c1-12))"
    echo "- Background: highest all-CPU busy before a server start ${BG_MAX}% (threshold ${IDLE_MAX}%, $BG_TIMEOUTS start(s) went ahead above it); loadavg at start $LOAD_START, at end $LOAD_END"
    echo "- Layout: servers \`taskset -c $SERVER_CPU\`, fio \`taskset -c $FIO_CPU\`, TCP on 127.0.0.1"
    echo "- Servers: twinblk \`serve --cores $SERVER_CPU --wait poll|adaptive\` (1 GiB malloc volume, no control socket);" \
        "\`nbdkit -f memory size=1G\`; \`qemu-nbd -f raw -t --cache=writeback --aio=threads\` on a 1 GiB file in /dev/shm;" \
        "\`nbdkit -f null size=1G\` (ceiling of fio's NBD client)"
    echo "- Each point: \`fio --name=p --ioengine=nbd --uri=nbd://127.0.0.1:PORT/vol0 --bs=$BS --size=$SIZE --numjobs=1" \
        "--rw=RW --iodepth=QD --norandommap --randrepeat=0 --time_based --runtime=$RUNTIME --ramp_time=$RAMP --output-format=json\`;" \
        "each server fresh per repetition, after a fill pass \`--rw=write --bs=1M --iodepth=8 --size=$SIZE\`."
    echo "- Values: median of $REPS repetitions (each metric separately); latencies are fio completion latency (clat) in µs."
    echo
    python3 - "$WORK" "$REPS" "$SERVERS" <<'PY'
import json, os, statistics, sys

work, reps, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
RWS = ["randread", "randwrite"]
QDS = [1, 32]
LABEL = {
    "twinblk-poll": "twinblk (poll)",
    "twinblk-adaptive": "twinblk (adaptive)",
    "nbdkit-memory": "nbdkit memory",
    "qemu-nbd": "qemu-nbd (raw, /dev/shm)",
    "nbdkit-null": "nbdkit null (ceiling)",
}

def load(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    i = text.find("{")
    if i < 0:
        return None
    try:
        j = json.loads(text[i:])
    except ValueError:
        return None
    job = j["jobs"][0]
    if job.get("error", 0):
        return None
    return job

res = {}    # (server, rw, qd) -> dict(iops, p50, p99, n)
for s in servers:
    for rw in RWS:
        for qd in QDS:
            iops, p50, p99 = [], [], []
            for r in range(reps):
                job = load(os.path.join(work, f"{s}.{rw}.qd{qd}.rep{r}.json"))
                if job is None:
                    continue
                d = job["read" if rw == "randread" else "write"]
                pct = d["clat_ns"].get("percentile", {})
                iops.append(d["iops"])
                p50.append(pct.get("50.000000", float("nan")) / 1000.0)
                p99.append(pct.get("99.000000", float("nan")) / 1000.0)
            if iops:
                res[(s, rw, qd)] = dict(
                    iops=statistics.median(iops), p50=statistics.median(p50),
                    p99=statistics.median(p99), n=len(iops), all=iops)

def cell(s, rw, qd, k):
    v = res.get((s, rw, qd))
    if v is None:
        return "ERR"
    if k == "iops":
        return f"{v['iops']:.0f}"
    return f"{v[k]:.1f}"

hdr = ["server"]
for rw in RWS:
    for qd in QDS:
        short = "rr" if rw == "randread" else "rw"
        hdr += [f"{short} QD{qd} IOPS", f"{short} QD{qd} p50 µs", f"{short} QD{qd} p99 µs"]
print("| " + " | ".join(hdr) + " |")
print("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
for s in servers:
    row = [LABEL[s]]
    for rw in RWS:
        for qd in QDS:
            row += [cell(s, rw, qd, "iops"), cell(s, rw, qd, "p50"), cell(s, rw, qd, "p99")]
    print("| " + " | ".join(row) + " |")
missing = [k for k in ((s, rw, qd) for s in servers for rw in RWS for qd in QDS)
           if k not in res or res[k]["n"] < reps]
if missing:
    print()
    for (s, rw, qd) in missing:
        n = res.get((s, rw, qd), {}).get("n", 0)
        print(f"- WARNING: {s} {rw} QD{qd}: {n}/{reps} repetitions succeeded")

print()
print("Per-repetition IOPS (for spread):")
print()
for s in servers:
    parts = []
    for rw in RWS:
        for qd in QDS:
            v = res.get((s, rw, qd))
            short = "rr" if rw == "randread" else "rw"
            parts.append(f"{short}/QD{qd} " + ("ERR" if v is None else
                         "/".join(f"{x:.0f}" for x in v["all"])))
    print(f"- {LABEL[s]}: " + "; ".join(parts))

def ratio(a, b, rw, qd, k="iops"):
    x, y = res.get((a, rw, qd)), res.get((b, rw, qd))
    if x is None or y is None or not y[k]:
        return None
    return x[k] / y[k]

def fmt(r, pct=False):
    if r is None:
        return "n/a"
    return f"{r * 100:.1f}%" if pct else f"{r:.2f}x"

def verdict(ok):
    return "n/a" if ok is None else ("MET" if ok else "NOT MET")

print()
print("Ratios (medians):")
print()
for tb in ("twinblk-poll", "twinblk-adaptive"):
    if tb not in servers:
        continue
    for rw in RWS:
        if "nbdkit-memory" in servers:
            for qd in (32, 1):
                r = ratio(tb, "nbdkit-memory", rw, qd)
                goal = f" (goal >= 1.20x: {verdict(None if r is None else r >= 1.2)})" if qd == 32 else ""
                print(f"- {LABEL[tb]} / nbdkit memory IOPS, {rw} QD{qd}: {fmt(r)}{goal}")
        if "nbdkit-null" in servers:
            r = ratio(tb, "nbdkit-null", rw, 32)
            print(f"- {LABEL[tb]} / null ceiling IOPS, {rw} QD32: {fmt(r, True)}"
                  f" (goal >= 95%: {verdict(None if r is None else r >= 0.95)})")
        if "nbdkit-memory" in servers:
            for qd in (1, 32):
                a, b = res.get((tb, rw, qd)), res.get(("nbdkit-memory", rw, qd))
                if a is None or b is None:
                    print(f"- {LABEL[tb]} p99 vs nbdkit memory, {rw} QD{qd}: n/a")
                    continue
                print(f"- {LABEL[tb]} p99 vs nbdkit memory, {rw} QD{qd}: {a['p99']:.1f} µs vs"
                      f" {b['p99']:.1f} µs ({a['p99'] / b['p99']:.2f}x; goal lower: "
                      f"{verdict(a['p99'] < b['p99'])})")
if "qemu-nbd" in servers:
    for tb in ("twinblk-poll", "twinblk-adaptive"):
        if tb in servers:
            print(f"- {LABEL[tb]} / qemu-nbd IOPS (info): " + ", ".join(
                f"{rw} QD{qd} {fmt(ratio(tb, 'qemu-nbd', rw, qd))}" for rw in RWS for qd in QDS))
PY
}
