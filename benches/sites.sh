# shellcheck shell=bash
# Shared by the side-by-side scripts that run twinblk sites (sourced, not run): starting a site
# from "$WORK/<name>.toml", stopping every site, reading a site's mirror_status, waiting for
# site a's mirror link. Needs WORK, BIN, CTL, PIDS (an array) and SCRIPT (for messages); BIN and
# CTL are read at each call, so a script may switch them between sites (e.g. to an older build).
# Also: sampling the server processes' CPU time (cpu_init, cpu_start, cpu_stop, cpu_window below).

start() { # name
    "$BIN" serve --config "$WORK/$1.toml" >"$WORK/$1.out" 2>"$WORK/$1.log" &
    PIDS+=($!)
    for _ in $(seq 100); do [[ -S $WORK/$1.sock ]] && grep -q "Ctrl-C" "$WORK/$1.out" && return; sleep 0.05; done
    echo "$SCRIPT: site $1 did not start; log:" >&2; cat "$WORK/$1.log" >&2; exit 1
}

stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
    rm -rf "$WORK"/*.sock "$WORK"/*.state
}

mstat() { "$CTL" --socket "$WORK/$1.sock" mirror_status; }

wait_link() {
    for _ in $(seq 200); do
        mstat a | grep -q '"state": "up"' && return
        sleep 0.05
    done
    echo "$SCRIPT: link never came up" >&2; exit 1
}

# ---- server CPU time ----------------------------------------------------------------------------
# Also sourced by nbd_compare.sh (which uses only this part; it needs only WORK). cpu_init writes
# the helper; cpu_start samples utime+stime (fields 14 and 15 of /proc/<pid>/stat, in clock
# ticks, CLK_TCK from `getconf CLK_TCK`) of the given processes every CPU_EVERY seconds with a
# wall-clock time stamp until cpu_stop; cpu_window then gives the CPU seconds each process used
# inside a client's measured window. The window is named by its end and length (fio: its JSON's
# timestamp_ms and the job's runtime; other clients: their exit time and reported run time),
# which are known only to within some tens of ms (fio writes timestamp_ms ~60 ms after the last
# completion), so the window is shrunk by CPU_MARGIN = 10% of its length (at least 0.2 s, at most
# 1 s) at each end and the CPU used between the first and the last sample inside it is divided by
# the time between those samples: a rate in the steady state of the window, which the caller
# divides by the client's IOPS over the window to get CPU per I/O.
CPU_EVERY=0.05
CPU_PID=""
CLK_TCK=$(getconf CLK_TCK)

cpu_init() {
    CPU_PY=$WORK/cpu.py
    cat >"$CPU_PY" <<'PY'
import json, os, signal, sys, time

def ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return -1
    rest = s[s.rindex(")") + 2:].split()  # rest[0] is field 3
    return int(rest[11]) + int(rest[12])  # fields 14 (utime) and 15 (stime)

def pid_of(p):  # "PID", or "@FILE": the pid written to FILE (None until it is there)
    if not p.startswith("@"):
        return int(p)
    try:
        with open(p[1:]) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None

def sample(out, every, most, pids):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    end = time.monotonic() + most
    known = [None] * len(pids)
    with open(out, "w") as f:
        while time.monotonic() < end:
            known = [k if k is not None else pid_of(p) for k, p in zip(known, pids)]
            f.write(f"{time.time_ns() // 1000} "
                    + " ".join(str(-1 if k is None else ticks(k)) for k in known) + "\n")
            f.flush()
            time.sleep(every)

def window(samples, hz, end_spec, length_ms=None):
    if end_spec.startswith("fio:"):
        text = open(end_spec[4:]).read()
        j = json.loads(text[text.index("{"):])
        job = j["jobs"][0]
        end_ms = j["timestamp_ms"]
        length_ms = max(job[d]["runtime"] for d in ("read", "write", "trim"))
    else:
        end_ms = float(end_spec)
    length_ms = float(length_ms)
    margin = min(1000.0, max(200.0, 0.1 * length_ms))
    lo, hi = (end_ms - length_ms + margin) * 1000, (end_ms - margin) * 1000  # µs
    rows = []
    for line in open(samples):
        v = line.split()
        if len(v) >= 2:
            rows.append([int(x) for x in v])
    inside = [r for r in rows if lo <= r[0] <= hi]
    if len(inside) < 2 or inside[-1][0] - inside[0][0] < 0.5 * (hi - lo):
        sys.exit(f"cpu window: samples cover too little of the window ({len(inside)} inside)")
    a, b = inside[0], inside[-1]
    # null for a process not there (yet, or any more) at either end
    print(json.dumps({"secs": (b[0] - a[0]) / 1e6,
                      "cpu_s": [(y - x) / hz if min(x, y) >= 0 else None
                                for x, y in zip(a[1:], b[1:])],
                      "margin_ms": margin}))

if sys.argv[1] == "sample":
    sample(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5:])
else:
    window(sys.argv[2], int(sys.argv[3]), *sys.argv[4:])
PY
}

cpu_start() { # OUT MAX_SECONDS PID|@PIDFILE... (sets CPU_PID; returns once the first sample is written)
    local out=$1 most=$2
    shift 2
    rm -f "$out"
    python3 "$CPU_PY" sample "$out" "$CPU_EVERY" "$most" "$@" &
    CPU_PID=$!
    for _ in $(seq 100); do [[ -s $out ]] && return; sleep 0.02; done
    echo "cpu_start: no CPU sample after 2 s (sampler pid $CPU_PID)" >&2
}

cpu_stop() {
    [[ -n $CPU_PID ]] || return 0
    kill -TERM "$CPU_PID" 2>/dev/null || true
    wait "$CPU_PID" 2>/dev/null || true
    CPU_PID=""
}

# cpu_window SAMPLES fio:FIO_JSON | SAMPLES END_MS LENGTH_MS -> {"secs": S, "cpu_s": [per process]}
# (a process given as @PIDFILE is sampled once its pid is in that file; null if it was not there
# at both ends of the window)
cpu_window() { python3 "$CPU_PY" window "$1" "$CLK_TCK" "${@:2}"; }
