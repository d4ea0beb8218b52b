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
# repetitions for each metric of each point (IOPS, clat p50, clat p99, server CPU per I/O; each
# median taken independently).
#
# Server CPU per I/O: utime+stime of the server process (/proc/<pid>/stat fields 14 and 15, in
# clock ticks of `getconf CLK_TCK`, all threads) is sampled every 50 ms during each point; the
# CPU used inside fio's measured window (after the ramp; the window's ends shrunk by 10% of
# RUNTIME, at least 0.2 s, since fio's JSON places them only to within ~60 ms) divided by the
# I/Os fio completed in that time (its IOPS x the time) gives µs of server CPU per I/O. A polling
# server spends a whole core whatever the load, so its figure is 1e6 / IOPS.
#
# Old tree side by side: with OLD_BIN=/path/to/old/twinblk the servers twinblk-old-poll and
# twinblk-old-adaptive (the same command line and config file, run with OLD_BIN) are added to the
# default SERVERS and measured in the same rotation, and the report adds new/old ratios at every
# point. For example (the worktree of the tree before a change, built first):
#
#   (cd /work/before && CARGO_TARGET_DIR=/work/before/target cargo build --release -j1 --bin twinblk)
#   OLD_BIN=/work/before/target/release/twinblk RUNTIME=10 REPS=5 bash benches/nbd_compare.sh
#
# Environment:
#   RUNTIME    seconds measured per point (default 10)
#   REPS       repetitions per point (default 3)
#   RAMP       fio ramp_time seconds before each measurement (default 2)
#   BASE_PORT  first TCP port (default 10900); ports BASE_PORT .. BASE_PORT+10*REPS+9 are used
#   SERVERS    subset/order of: twinblk-poll twinblk-adaptive nbdkit-memory qemu-nbd nbdkit-null,
#              and with OLD_BIN twinblk-old-poll twinblk-old-adaptive (default: all of them)
#   OLD_BIN    an older twinblk binary to measure side by side (see above; default: none)
#   SERVER_CPU / FIO_CPU  cores for servers / fio (default 0 / 1)
#   KEEP=1     keep the raw fio JSON and server logs (the directory is printed)
#   IDLE_WAIT  before each server start, wait up to this many seconds (default 300) until other
#              processes use <= IDLE_MAX % of one core (default 10); on timeout the run goes on.
#   RETRIES    re-runs of a point during which other processes used > IDLE_MAX % of a core
#              (default 2). The background CPU seen during every point is reported.
#
# Needs: cargo, fio (with the nbd engine), nbdkit (memory, null), qemu-nbd, nbdinfo, taskset,
# python3. Servers listen on 127.0.0.1 only and are always killed on exit (trap).

set -euo pipefail

RUNTIME=${RUNTIME:-10}
REPS=${REPS:-3}
RAMP=${RAMP:-2}
BASE_PORT=${BASE_PORT:-10900}
OLD_BIN=${OLD_BIN:-}
if [[ -n $OLD_BIN ]]; then
    DEFAULT_SERVERS="twinblk-poll twinblk-adaptive twinblk-old-poll twinblk-old-adaptive nbdkit-memory qemu-nbd nbdkit-null"
else
    DEFAULT_SERVERS="twinblk-poll twinblk-adaptive nbdkit-memory qemu-nbd nbdkit-null"
fi
SERVERS=${SERVERS:-$DEFAULT_SERVERS}
SERVER_CPU=${SERVER_CPU:-0}
FIO_CPU=${FIO_CPU:-1}
KEEP=${KEEP:-0}
IDLE_WAIT=${IDLE_WAIT:-300}
IDLE_MAX=${IDLE_MAX:-10}
RETRIES=${RETRIES:-2}
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
is_uint "$IDLE_MAX" && ((IDLE_MAX <= 200)) || die "IDLE_MAX must be 0..200"
is_uint "$RETRIES" && ((RETRIES <= 5)) || die "RETRIES must be 0..5"
for s in $SERVERS; do
    case $s in
    twinblk-poll | twinblk-adaptive | nbdkit-memory | qemu-nbd | nbdkit-null) ;;
    twinblk-old-poll | twinblk-old-adaptive) [[ -n $OLD_BIN ]] || die "$s needs OLD_BIN" ;;
    *) die "unknown server '$s'" ;;
    esac
done
read -r -a SRV <<<"$SERVERS"
((${#SRV[@]} <= 10)) || die "at most 10 servers (ports are BASE_PORT + 10 * rep + index)"
if [[ -n $OLD_BIN ]]; then
    [[ -x $OLD_BIN && -f $OLD_BIN ]] || die "OLD_BIN=$OLD_BIN is not an executable file"
    OLD_BIN=$(cd "$(dirname "$OLD_BIN")" && pwd)/$(basename "$OLD_BIN")
fi

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
INVOCATION="RUNTIME=$RUNTIME REPS=$REPS RAMP=$RAMP IDLE_MAX=$IDLE_MAX RETRIES=$RETRIES BASE_PORT=$BASE_PORT bash benches/nbd_compare.sh"
if [[ $SERVERS != "$DEFAULT_SERVERS" ]]; then
    INVOCATION="SERVERS='$SERVERS' $INVOCATION"
fi
if [[ -n $OLD_BIN ]]; then
    INVOCATION="OLD_BIN=$OLD_BIN $INVOCATION"
fi

for t in fio nbdkit qemu-nbd nbdinfo taskset python3 timeout cargo getconf; do
    command -v "$t" >/dev/null || die "missing tool: $t"
done
fio --enghelp=nbd >/dev/null 2>&1 || die "fio has no nbd ioengine"
NCPU=$(nproc)
((SERVER_CPU < NCPU && FIO_CPU < NCPU)) || die "need cores $SERVER_CPU and $FIO_CPU (nproc=$NCPU)"

# ---- state and cleanup ----------------------------------------------------------------------
WORK=$(mktemp -d /tmp/nbd_compare.XXXXXX)
# shellcheck source=benches/sites.sh
source "$SCRIPT_DIR/sites.sh" # only its server-CPU part (cpu_*) is used here
cpu_init
SHM_FILE=/dev/shm/nbd_compare.$$.raw
SERVER_PID=""
FG_PID=""       # the fio (or fill) run in progress
BG_PID=""       # the background-load sampler in progress

# run_fg CMD...: run CMD in the background and wait for it. A script blocked in `wait` acts on
# SIGINT/SIGTERM at once; while a plain foreground child runs, bash would defer (or, for
# SIGINT, even drop) the signal until the child ends.
run_fg() {
    local rc=0
    "$@" &
    FG_PID=$!
    wait "$FG_PID" || rc=$?
    FG_PID=""
    return "$rc"
}

stop_server() {
    local pid=$SERVER_PID i
    [[ -n $pid ]] || return 0
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
    SERVER_PID=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in $FG_PID $BG_PID $CPU_PID; do
        kill -TERM "$p" 2>/dev/null || true
    done
    for p in $FG_PID $BG_PID $CPU_PID; do
        wait "$p" 2>/dev/null || true
    done
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
# tree_of DIR: the git commit checked out where DIR is (+ "with uncommitted changes").
tree_of() {
    local c
    c=$(git -C "$1" rev-parse --short HEAD 2>/dev/null) || { echo "not in a git tree"; return; }
    if [[ -n $(git -C "$1" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        c="$c with uncommitted changes"
    fi
    echo "$c"
}
echo "nbd_compare: building twinblk (cargo build --release -p twinblk-datapath)" >&2
(cd "$ROOT" && cargo build --release -p twinblk-datapath >&2) || die "cargo build failed"
TWINBLK=$ROOT/target/release/twinblk
[[ -x $TWINBLK ]] || die "no $TWINBLK after build"
TREE_NEW=$(tree_of "$ROOT")

# The CLI's `--control-socket ''` is rejected by clap (empty value), so the control socket is
# switched off through a config file instead; the volume is the same as the built-in default.
TB_CONF=$WORK/twinblk.toml
cat >"$TB_CONF" <<'EOF'
[control]
socket = ""

[nvmf]
listen = []

[[volume]]
name = "vol0"
backend = "malloc"
size = "1GiB"
EOF

# The old binary must take the same command line and read the config file the same way.
if [[ -n $OLD_BIN ]]; then
    OLD_HELP=$("$OLD_BIN" serve --help 2>&1) || die "$OLD_BIN serve --help failed: $OLD_HELP"
    for f in --config --nbd-listen --cores --wait poll: adaptive:; do
        grep -q -- "$f" <<<"$OLD_HELP" || die "$OLD_BIN serve --help has no $f"
    done
    "$OLD_BIN" check-config "$TB_CONF" >"$WORK/old.check" 2>&1 ||
        { cat "$WORK/old.check" >&2; die "$OLD_BIN check-config rejects the config"; }
    "$TWINBLK" check-config "$TB_CONF" >"$WORK/new.check" 2>&1 || die "check-config failed"
    cmp -s "$WORK/old.check" "$WORK/new.check" ||
        die "$OLD_BIN reads the config differently: $(diff "$WORK/new.check" "$WORK/old.check")"
    TREE_OLD=$(tree_of "$(dirname "$OLD_BIN")")
fi

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
    twinblk-old-poll | twinblk-old-adaptive)
        taskset -c "$SERVER_CPU" "$OLD_BIN" serve -c "$TB_CONF" --nbd-listen "127.0.0.1:$port" \
            --cores "$SERVER_CPU" --wait "${name#twinblk-old-}" >"$log" 2>&1 &
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
# The machine is shared (other builds may start at any time). bgcpu.py measures the CPU time used
# by OTHER user-space processes (not kernel threads, not fio, not the server under test) over an
# interval, in % of one core, and names the top consumer. It is used (1) before each server start
# to wait for a quiet machine and (2) alongside every measured point: a point measured while
# others used more than IDLE_MAX % of a core is re-run (up to RETRIES times) after waiting again.
BGCPU=$WORK/bgcpu.py
cat >"$BGCPU" <<'PY'
import os, sys, time
secs, excl = float(sys.argv[1]), {int(x) for x in sys.argv[2:] if x}
excl.add(os.getpid())
hz = os.sysconf("SC_CLK_TCK")

def snap():
    d = {}
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) in excl:
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm, rest = s[s.index("(") + 1:s.rindex(")")], s[s.rindex(")") + 2:].split()
        if p == "2" or rest[1] == "2" or comm == "fio":
            continue
        d[int(p)] = (int(rest[11]) + int(rest[12]), comm)
    return d

t0 = time.monotonic()
first = snap()
base = {pid: v[0] for pid, v in first.items()}
last = dict(first)
while True:
    left = secs - (time.monotonic() - t0)
    if left <= 0:
        break
    time.sleep(min(1.0, left))
    for pid, v in snap().items():
        base.setdefault(pid, 0)
        last[pid] = v
el = time.monotonic() - t0
use = {}
for pid, (j, comm) in last.items():
    use[comm] = use.get(comm, 0) + max(0, j - base.get(pid, j))
tot = sum(use.values())
top = max(use, key=use.get) if tot else "-"
print(f"{100.0 * tot / hz / el:.0f} {top}")
PY

# bg SECONDS -> "PCT TOPCOMM" for other processes (the running server excluded).
bg() { python3 "$BGCPU" "$1" "$SERVER_PID" 2>/dev/null || echo "0 ?"; }

BG_WAITS=0      # server starts / point re-runs that had to wait for a quiet machine
BG_TIMEOUTS=0   # ... that went ahead on a busy machine after IDLE_WAIT
wait_idle() {
    local b i waited=0
    b=$(bg 2)
    for ((i = 0; i < IDLE_WAIT / 2 && ${b%% *} > IDLE_MAX; i++)); do
        waited=1
        ((i % 15 == 0)) && echo "nbd_compare: others use ${b%% *}% of a core (top: ${b#* }), waiting (up to ${IDLE_WAIT}s)" >&2
        b=$(bg 2)
    done
    BG_WAITS=$((BG_WAITS + waited))
    if ((${b%% *} > IDLE_MAX)); then
        BG_TIMEOUTS=$((BG_TIMEOUTS + 1))
        echo "nbd_compare: WARNING: others still use ${b%% *}% of a core (${b#* }), going on" >&2
    fi
    return 0
}

# ---- fio ----------------------------------------------------------------------------------------
# (engine options such as --uri must come after --ioengine)
FIO_COMMON=(--ioengine=nbd --bs=$BS --size=$SIZE --numjobs=1 --output-format=json)

# fill: sequential 1 MiB writes over the whole 256 MiB region.
fill() {
    local out=$1
    run_fg timeout 300 taskset -c "$FIO_CPU" fio --name=fill --ioengine=nbd --uri="$URI" --rw=write \
        --bs=1M --iodepth=8 --size=$SIZE --numjobs=1 --output-format=json --output="$out" \
        >/dev/null 2>&1 || die "fill pass failed on $URI (see $out)"
}

# point RW QD OUT: one measurement (re-run if others were busy meanwhile). A fio failure is
# recorded (no JSON), not fatal. OUT.bg gets "other-CPU% top-process attempts"; OUT.cpu the
# server's CPU seconds inside fio's window (cpu_window), from the samples in OUT.samples.
point() {
    local rw=$1 qd=$2 out=$3 attempt b bgfile=$3.bgtmp
    for ((attempt = 0; attempt <= RETRIES; attempt++)); do
        rm -f "$out.cpu"
        cpu_start "$out.samples" "$((RUNTIME + RAMP + 70))" "$SERVER_PID"
        python3 "$BGCPU" "$((RUNTIME + RAMP))" "$SERVER_PID" "$CPU_PID" >"$bgfile" 2>/dev/null &
        BG_PID=$!
        if ! run_fg timeout $((RUNTIME + RAMP + 60)) taskset -c "$FIO_CPU" fio --name=p \
            "${FIO_COMMON[@]}" --uri="$URI" --rw="$rw" --iodepth="$qd" --norandommap \
            --randrepeat=0 --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
            --percentile_list=50:99 --output="$out" >"$out.log" 2>&1; then
            echo "nbd_compare: fio $rw qd$qd FAILED on $URI" >&2
            mv -f "$out" "$out.failed" 2>/dev/null || true
        fi
        wait "$BG_PID" 2>/dev/null || true
        BG_PID=""
        cpu_stop
        if [[ -f $out ]] && ! cpu_window "$out.samples" "fio:$out" >"$out.cpu" 2>"$out.cpu.err"; then
            echo "nbd_compare: no server CPU for $rw qd$qd: $(cat "$out.cpu.err")" >&2
            rm -f "$out.cpu"
        fi
        rm -f "$out.cpu.err"
        b=$(cat "$bgfile" 2>/dev/null)
        [[ $b =~ ^[0-9]+\ .+ ]] || b="0 ?"
        echo "$b $((attempt + 1))" >"$out.bg"
        if ((${b%% *} <= IDLE_MAX)); then
            break
        fi
        echo "nbd_compare: others used ${b%% *}% of a core during this point (top: ${b#* })" >&2
        if ((attempt < RETRIES)); then
            wait_idle
            echo "nbd_compare: re-running $rw qd$qd" >&2
        fi
    done
    rm -f "$bgfile"
}

# ---- run ----------------------------------------------------------------------------------------
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
    echo "- Tools: $(fio --version), $(nbdkit --version 2>&1 | head -1), $(qemu-nbd --version | head -1), twinblk $("$TWINBLK" --version | awk '{print $2}') ($(sha256sum "$TWINBLK" | cut -c1-12), tree $TREE_NEW)"
    if [[ -n $OLD_BIN ]]; then
        echo "- Old tree (twinblk-old-*): \`$OLD_BIN\`, twinblk $("$OLD_BIN" --version | awk '{print $2}') ($(sha256sum "$OLD_BIN" | cut -c1-12); its directory's checkout: $TREE_OLD); same command line and config file as the new one (\`serve --help\` and \`check-config\` checked)"
    fi
    echo "- Background: other processes were allowed <= ${IDLE_MAX}% of one core (waited $BG_WAITS time(s) for a quiet machine, went ahead busy $BG_TIMEOUTS time(s)); loadavg at start $LOAD_START, at end $LOAD_END"
    echo "- Layout: servers \`taskset -c $SERVER_CPU\`, fio \`taskset -c $FIO_CPU\`, TCP on 127.0.0.1"
    echo "- Servers: twinblk \`serve --cores $SERVER_CPU --wait poll|adaptive\` (1 GiB malloc volume, no control socket);" \
        "\`nbdkit -f memory size=1G\`; \`qemu-nbd -f raw -t --cache=writeback --aio=threads\` on a 1 GiB file in /dev/shm;" \
        "\`nbdkit -f null size=1G\` (ceiling of fio's NBD client)"
    echo "- Each point: \`fio --name=p --ioengine=nbd --uri=nbd://127.0.0.1:PORT/vol0 --bs=$BS --size=$SIZE --numjobs=1" \
        "--rw=RW --iodepth=QD --norandommap --randrepeat=0 --time_based --runtime=$RUNTIME --ramp_time=$RAMP --output-format=json\`;" \
        "each server fresh per repetition, after a fill pass \`--rw=write --bs=1M --iodepth=8 --size=$SIZE\`."
    echo "- Values: median of $REPS repetitions (each metric separately); latencies are fio completion latency (clat) in µs."
    echo "- Server CPU: utime+stime of the server process (\`/proc/PID/stat\` fields 14+15, all threads, CLK_TCK=$CLK_TCK) sampled every ${CPU_EVERY}s;" \
        "srv µs/IO = server CPU seconds inside fio's measured window (after the ramp; each end shrunk by 10% of the runtime, 0.2..1 s)" \
        "/ (fio's IOPS x that time). A polling server burns its core whatever the load (its figure is 1e6/IOPS)."
    echo
    IDLE_MAX=$IDLE_MAX python3 - "$WORK" "$REPS" "$SERVERS" <<'PY'
import json, os, statistics, sys

work, reps, servers = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
RWS = ["randread", "randwrite"]
QDS = [1, 32]
LABEL = {
    "twinblk-poll": "twinblk (poll)",
    "twinblk-adaptive": "twinblk (adaptive)",
    "twinblk-old-poll": "twinblk old tree (poll)",
    "twinblk-old-adaptive": "twinblk old tree (adaptive)",
    "nbdkit-memory": "nbdkit memory",
    "qemu-nbd": "qemu-nbd (raw, /dev/shm)",
    "nbdkit-null": "nbdkit null (ceiling)",
}
TWINBLK = ("twinblk-poll", "twinblk-adaptive", "twinblk-old-poll", "twinblk-old-adaptive")

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

def load_cpu(path):
    try:
        with open(path) as f:
            c = json.load(f)
        return None if c["cpu_s"][0] is None else (c["cpu_s"][0], c["secs"])
    except (OSError, ValueError, KeyError, IndexError):
        return None

res = {}    # (server, rw, qd) -> dict(iops, p50, p99, cpu, us_io, srv_pct, n, all, all_us)
for s in servers:
    for rw in RWS:
        for qd in QDS:
            iops, p50, p99, cpu, us_io, srv_pct = [], [], [], [], [], []
            for r in range(reps):
                base = os.path.join(work, f"{s}.{rw}.qd{qd}.rep{r}.json")
                job = load(base)
                if job is None:
                    continue
                d = job["read" if rw == "randread" else "write"]
                pct = d["clat_ns"].get("percentile", {})
                iops.append(d["iops"])
                cpu.append(job.get("usr_cpu", 0.0) + job.get("sys_cpu", 0.0))
                p50.append(pct.get("50.000000", float("nan")) / 1000.0)
                p99.append(pct.get("99.000000", float("nan")) / 1000.0)
                c = load_cpu(base + ".cpu")
                if c is not None and d["iops"] > 0 and c[1] > 0:
                    us_io.append(c[0] * 1e6 / (d["iops"] * c[1]))
                    srv_pct.append(100.0 * c[0] / c[1])
            if iops:
                res[(s, rw, qd)] = dict(
                    iops=statistics.median(iops), p50=statistics.median(p50),
                    p99=statistics.median(p99), cpu=statistics.median(cpu), n=len(iops),
                    all=iops, all_us=us_io, n_us=len(us_io),
                    us_io=statistics.median(us_io) if us_io else None,
                    srv_pct=statistics.median(srv_pct) if srv_pct else None)

def cell(s, rw, qd, k):
    v = res.get((s, rw, qd))
    if v is None or v.get(k) is None:
        return "ERR"
    if k == "iops":
        return f"{v['iops']:.0f}"
    if k == "us_io":
        return f"{v[k]:.2f}"
    return f"{v[k]:.1f}"

hdr = ["server"]
for rw in RWS:
    for qd in QDS:
        short = "rr" if rw == "randread" else "rw"
        hdr += [f"{short} QD{qd} IOPS", f"{short} QD{qd} p50 µs", f"{short} QD{qd} p99 µs",
                f"{short} QD{qd} srv µs/IO"]
print("| " + " | ".join(hdr) + " |")
print("|" + "|".join(["---"] + ["---:"] * (len(hdr) - 1)) + "|")
for s in servers:
    row = [LABEL[s]]
    for rw in RWS:
        for qd in QDS:
            row += [cell(s, rw, qd, "iops"), cell(s, rw, qd, "p50"), cell(s, rw, qd, "p99"),
                    cell(s, rw, qd, "us_io")]
    print("| " + " | ".join(row) + " |")
missing = [k for k in ((s, rw, qd) for s in servers for rw in RWS for qd in QDS)
           if k not in res or res[k]["n"] < reps or res[k]["n_us"] < res[k]["n"]]
if missing:
    print()
    for (s, rw, qd) in missing:
        v = res.get((s, rw, qd), {})
        print(f"- WARNING: {s} {rw} QD{qd}: {v.get('n', 0)}/{reps} repetitions succeeded,"
              f" server CPU measured in {v.get('n_us', 0)}")

bgs = []
for s in servers:
    for rw in RWS:
        for qd in QDS:
            for r in range(reps):
                try:
                    with open(os.path.join(work, f"{s}.{rw}.qd{qd}.rep{r}.json.bg")) as f:
                        pct, comm, att = f.read().split()
                    bgs.append((int(pct), comm, int(att), s, rw, qd, r))
                except (OSError, ValueError):
                    pass
if bgs:
    reruns = sum(b[2] - 1 for b in bgs)
    worst = max(bgs)
    print()
    print(f"Background (CPU of other processes during the kept measurement of each point, % of one"
          f" core): median {statistics.median(b[0] for b in bgs):.0f}%, max {worst[0]}%"
          f" ({worst[1]}, {worst[3]} {worst[4]} QD{worst[5]} rep {worst[6] + 1});"
          f" {reruns} re-run(s) because of background load.")
    busy = [b for b in bgs if b[0] > int(os.environ.get("IDLE_MAX", "10"))]
    for b in busy:
        print(f"- WARNING: kept with background {b[0]}% ({b[1]}): {b[3]} {b[4]} QD{b[5]} rep {b[6] + 1}")

def per_point(title, fmt_v):
    print()
    print(title)
    print()
    for s in servers:
        parts = []
        for rw in RWS:
            for qd in QDS:
                v = res.get((s, rw, qd))
                short = "rr" if rw == "randread" else "rw"
                parts.append(f"{short}/QD{qd} " + ("ERR" if v is None else fmt_v(v)))
        print(f"- {LABEL[s]}: " + "; ".join(parts))

per_point("Per-repetition IOPS (for spread):",
          lambda v: "/".join(f"{x:.0f}" for x in v["all"]))
per_point("Per-repetition server CPU per I/O, µs (for spread):",
          lambda v: "/".join(f"{x:.2f}" for x in v["all_us"]) or "ERR")
per_point("Client CPU (fio job usr+sys, median; near 100% means fio itself is the limit):",
          lambda v: f"{v['cpu']:.0f}%")
per_point("Server CPU (% of one core inside the window, median; a polling server is at 100%):",
          lambda v: "ERR" if v["srv_pct"] is None else f"{v['srv_pct']:.0f}%")

def ratio(a, b, rw, qd, k="iops"):
    x, y = res.get((a, rw, qd)), res.get((b, rw, qd))
    if x is None or y is None or x.get(k) is None or not y.get(k):
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
for tb in TWINBLK:
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
    for tb in TWINBLK:
        if tb in servers:
            print(f"- {LABEL[tb]} / qemu-nbd IOPS (info): " + ", ".join(
                f"{rw} QD{qd} {fmt(ratio(tb, 'qemu-nbd', rw, qd))}" for rw in RWS for qd in QDS))

# Server CPU per I/O against nbdkit memory (goal for the default serve, adaptive: <= 0.8x at
# randwrite QD32 without losing QD1 latency).
if "nbdkit-memory" in servers:
    print()
    print("Server CPU per I/O vs nbdkit memory (medians):")
    print()
    for tb in TWINBLK:
        if tb not in servers:
            continue
        r = ratio(tb, "nbdkit-memory", "randwrite", 32, "us_io")
        a, b = res.get((tb, "randwrite", 32)), res.get(("nbdkit-memory", "randwrite", 32))
        vals = "" if r is None else f" ({a['us_io']:.2f} vs {b['us_io']:.2f} µs)"
        goal = (f" (goal <= 0.80x: {verdict(None if r is None else r <= 0.8)})"
                if tb == "twinblk-adaptive" else "")
        print(f"- {LABEL[tb]} / nbdkit memory server µs per I/O, randwrite QD32: {fmt(r)}{vals}{goal}")
        print(f"  - other points (info): " + ", ".join(
            f"{rw} QD{qd} {fmt(ratio(tb, 'nbdkit-memory', rw, qd, 'us_io'))}"
            for rw in RWS for qd in QDS if (rw, qd) != ("randwrite", 32)))
        if tb == "twinblk-adaptive":
            for rw in RWS:
                x, y = res.get((tb, rw, 1)), res.get(("nbdkit-memory", rw, 1))
                if x is None or y is None:
                    print(f"  - QD1 latency vs nbdkit memory, {rw}: n/a")
                    continue
                ok = x["p50"] <= y["p50"] and x["p99"] <= y["p99"]
                print(f"  - QD1 latency vs nbdkit memory, {rw}: p50 {x['p50']:.1f} vs {y['p50']:.1f} µs"
                      f" ({x['p50'] / y['p50']:.2f}x), p99 {x['p99']:.1f} vs {y['p99']:.1f} µs"
                      f" ({x['p99'] / y['p99']:.2f}x) (goal not higher: {verdict(ok)})")

# New tree against the old one (OLD_BIN), same run, every point.
pairs = [(n, o) for n, o in (("twinblk-poll", "twinblk-old-poll"),
                             ("twinblk-adaptive", "twinblk-old-adaptive"))
         if n in servers and o in servers]
if pairs:
    print()
    print("New tree / old tree (medians; IOPS > 1 and latency, server CPU per I/O < 1 mean the new"
          " tree is better):")
    print()
    print("| wait | point | IOPS new/old | p50 new/old | p99 new/old | srv µs/IO new | srv µs/IO old | srv µs/IO new/old |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    worst_iops, worst_lat = [], []
    for n, o in pairs:
        for rw in RWS:
            for qd in QDS:
                short = "rr" if rw == "randread" else "rw"
                ri, r50, r99 = (ratio(n, o, rw, qd, k) for k in ("iops", "p50", "p99"))
                ru = ratio(n, o, rw, qd, "us_io")
                print(f"| {n.split('-')[-1]} | {short} QD{qd} | {fmt(ri)} | {fmt(r50)} | {fmt(r99)}"
                      f" | {cell(n, rw, qd, 'us_io')} | {cell(o, rw, qd, 'us_io')} | {fmt(ru)} |")
                if ri is not None:
                    worst_iops.append((ri, f"{n.split('-')[-1]} {short} QD{qd}"))
                for r in (r50, r99):
                    if r is not None:
                        worst_lat.append((r, f"{n.split('-')[-1]} {short} QD{qd}"))
    print()
    if worst_iops:
        w = min(worst_iops)
        print(f"- Lowest new/old IOPS: {w[0]:.2f}x ({w[1]}); points with new < old:"
              f" {sum(1 for r, _ in worst_iops if r < 1)}/{len(worst_iops)}")
    if worst_lat:
        w = max(worst_lat)
        print(f"- Highest new/old p50 or p99: {w[0]:.2f}x ({w[1]});"
              f" compare with the per-repetition spread above before calling a point slower")
PY
}
