#!/usr/bin/env bash
# twinperf against the clients it replaces, on the same target in the same run:
#   NBD:      fio --ioengine=nbd (libnbd, one job, single-threaded)  vs  twinperf nbd://
#   NVMe/TCP: twinblk-nvme perf (blocking initiator)                   vs  twinperf nvme+tcp://
#   iSCSI:    iscsi-perf (libiscsi; random reads only)                   vs  twinperf iscsi://
#   nbdnull:  the NBD pair against `nbdkit null` instead of twinblk (a server that does no work:
#             the clients' own ceilings; only with PROTOS including nbdnull)
#
#   cargo build --release -p twinblk-tools -p twinblk-datapath
#   RUNTIME=10 REPS=3 bash benches/twinperf_compare.sh
#
# One `twinblk serve` (release build) with a 1 GiB RAM volume, pinned to SERVER_CPU; every
# client pinned to CLIENT_CPU (one core each, taskset), all on 127.0.0.1. The 256 MiB working set
# is written once first (so reads hit written data). Points: 4 KiB randread at QD32 and QD1, and
# randwrite at QD32, one connection / one I/O queue. For each point the two clients of a protocol
# run in turns A B A B ... (REPS times each), RUNTIME seconds per run, no ramp for either.
#
# iscsi-perf has no write mode and reports IOPS only (its last "iops average", over the run);
# its randwrite point is twinperf alone, and its I/O count for CPU per I/O is IOPS x RUNTIME.
#
# Reported per point and client: MEDIAN of the repetitions of IOPS, p50 and p99 latency, and the
# client's own CPU per I/O (user+system of the client process, from wait4's rusage, divided by
# the I/Os it reports; process start and connection set-up are included, which weighs less than
# 1 % at RUNTIME=10). Ratios are twinperf / other of the medians. The machine's load average at
# the start and end is printed, since other work on a shared 2-core machine moves the figures.
#
# Environment:
#   RUNTIME      seconds per run (default 10)
#   REPS         repetitions per client and point (default 3)
#   BASE_PORT    NBD port; BASE_PORT+1 is NVMe/TCP, BASE_PORT+2 iSCSI (default 13900)
#   SERVER_CPU / CLIENT_CPU   cores (default 0 / 1)
#   WAIT         the server's reactor wait policy: poll | adaptive | interrupt (default adaptive)
#   PROTOS       subset of "nbd nvme iscsi nbdnull" (default "nbd nvme iscsi")
#   KEEP=1       keep raw outputs (the directory is printed)
#
# Needs: fio with the nbd engine, iscsi-perf (libiscsi-bin) for iSCSI, taskset, python3. The server listens on 127.0.0.1 only and
# is killed on exit (by its PID).

set -euo pipefail

RUNTIME=${RUNTIME:-10}
REPS=${REPS:-3}
BASE_PORT=${BASE_PORT:-13900}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
WAIT=${WAIT:-adaptive}
PROTOS=${PROTOS:-nbd nvme iscsi}
KEEP=${KEEP:-0}

die() { echo "twinperf_compare: $*" >&2; exit 1; }
[[ $RUNTIME =~ ^[0-9]+$ ]] && ((RUNTIME >= 1 && RUNTIME <= 3600)) || die "RUNTIME must be 1..3600"
[[ $REPS =~ ^[0-9]+$ ]] && ((REPS >= 1 && REPS <= 50)) || die "REPS must be 1..50"
[[ $BASE_PORT =~ ^[0-9]+$ ]] && ((BASE_PORT >= 1024 && BASE_PORT < 65535)) || die "bad BASE_PORT"
[[ $SERVER_CPU =~ ^[0-9]+$ && $CLIENT_CPU =~ ^[0-9]+$ ]] || die "bad SERVER_CPU/CLIENT_CPU"
case $WAIT in poll | adaptive | interrupt) ;; *) die "WAIT must be poll, adaptive or interrupt" ;; esac

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REL=${CARGO_TARGET_DIR:-$ROOT/target}/release
for b in twinblk twinperf twinblk-nvme; do
    [[ -x $REL/$b ]] || die "$REL/$b missing: cargo build --release -p twinblk-tools -p twinblk-datapath"
done
for t in fio taskset python3; do command -v "$t" >/dev/null || die "$t is not installed"; done

WORK=$(mktemp -d /tmp/twinperf-compare.XXXXXX)
SERVER_PID=
NULL_PID=
cleanup() {
    if [[ -n $SERVER_PID ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [[ -n $NULL_PID ]]; then kill "$NULL_PID" 2>/dev/null || true; wait "$NULL_PID" 2>/dev/null || true; fi
    if [[ $KEEP == 1 ]]; then echo "raw outputs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

NBD_PORT=$BASE_PORT
NVME_PORT=$((BASE_PORT + 1))
ISCSI_PORT=$((BASE_PORT + 2))
NULL_PORT=$((BASE_PORT + 3))
NQN=nqn.2026-11.io.twinblk:vol0
cat >"$WORK/serve.toml" <<EOF
[reactor]
cores = [$SERVER_CPU]
wait = "$WAIT"
[nbd]
listen = ["127.0.0.1:$NBD_PORT"]
[nvmf]
listen = ["127.0.0.1:$NVME_PORT"]
[iscsi]
listen = ["127.0.0.1:$ISCSI_PORT"]
[control]
socket = ""
[[volume]]
name = "vol0"
backend = "malloc"
size = "1GiB"
EOF
taskset -c "$SERVER_CPU" "$REL/twinblk" serve --config "$WORK/serve.toml" >"$WORK/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    grep -q "Ctrl-C stops it" "$WORK/serve.log" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; die "the server did not start"; }
    sleep 0.1
done
if [[ " $PROTOS " == *" nbdnull "* ]]; then
    command -v nbdkit >/dev/null || die "nbdkit is not installed (PROTOS has nbdnull)"
    taskset -c "$SERVER_CPU" nbdkit -f -i 127.0.0.1 -p "$NULL_PORT" null size=1G >"$WORK/nbdkit.log" 2>&1 &
    NULL_PID=$!
    for _ in $(seq 50); do nbdinfo "nbd://127.0.0.1:$NULL_PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
fi
# Fill the working set once.
taskset -c "$CLIENT_CPU" "$REL/twinperf" "nbd://127.0.0.1:$NBD_PORT/vol0" --rw write --bs 1m \
    --qd 8 --size 256m --ios 256 >/dev/null

echo "twinperf_compare: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, $(uname -r), tree $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "command: RUNTIME=$RUNTIME REPS=$REPS WAIT=$WAIT SERVER_CPU=$SERVER_CPU CLIENT_CPU=$CLIENT_CPU PROTOS=\"$PROTOS\" bash benches/twinperf_compare.sh"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

export WORK REL RUNTIME REPS CLIENT_CPU NBD_PORT NVME_PORT ISCSI_PORT NULL_PORT NQN PROTOS
python3 - <<'PY'
import json, os, re, statistics, subprocess, sys

W, REL = os.environ["WORK"], os.environ["REL"]
RUNTIME, REPS = int(os.environ["RUNTIME"]), int(os.environ["REPS"])
CPU = os.environ["CLIENT_CPU"]
NBD = f"nbd://127.0.0.1:{os.environ['NBD_PORT']}/vol0"
NULL = f"nbd://127.0.0.1:{os.environ['NULL_PORT']}/"
NVME_ADDR = f"127.0.0.1:{os.environ['NVME_PORT']}"
NQN = os.environ["NQN"]
ISCSI = f"iscsi://127.0.0.1:{os.environ['ISCSI_PORT']}/iqn.2026-11.io.twinblk:vol0/0"
POINTS = [("randread", 32), ("randread", 1), ("randwrite", 32)]

def run(cmd, tag, ok=(0,)):
    """Run pinned; return its stdout."""
    p = subprocess.Popen(["taskset", "-c", CPU] + cmd, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate()
    with open(f"{W}/{tag}.out", "w") as f:
        f.write(out + "\n--- stderr\n" + err)
    if p.returncode not in ok:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-2000:]}")
    return out

def run_cpu(cmd, tag, ok=(0,)):
    # The children's CPU counters grow by exactly this waited-for child (taskset execs it)
    # and the descendants it waited for.
    before = os.times()
    out = run(cmd, tag, ok)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return out, cpu

def fio(rw, qd, tag, uri=NBD):
    out, cpu = run_cpu(["fio", "--name=t", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}",
                        "--bs=4k", f"--iodepth={qd}", "--size=256M", "--time_based",
                        f"--runtime={RUNTIME}", "--output-format=json"], tag)
    j = json.loads(out[out.index("{"):])["jobs"][0]
    d = j["read"] if rw.endswith("read") else j["write"]
    ios = d["total_ios"]
    pct = d["clat_ns"]["percentile"]
    return dict(iops=d["iops"], p50=pct["50.000000"] / 1000, p99=pct["99.000000"] / 1000,
                cpu_us=cpu * 1e6 / max(ios, 1))

def twinperf(uri, rw, qd, tag):
    out, cpu = run_cpu([f"{REL}/twinperf", uri, f"--rw={rw}", "--bs=4k", f"--qd={qd}",
                        "--size=256m", f"--seconds={RUNTIME}", "--json"], tag)
    r = json.loads(out)
    return dict(iops=r["iops"], p50=r["latency_us"]["p50"], p99=r["latency_us"]["p99"],
                cpu_us=cpu * 1e6 / max(r["ios"], 1))

def nvme_perf(rw, qd, tag):
    out, cpu = run_cpu([f"{REL}/twinblk-nvme", "perf", "--addr", NVME_ADDR, "--nqn", NQN,
                        "--queues", "1", f"--qd={qd}", f"--rw={rw}", "--bs=4k",
                        f"--seconds={RUNTIME}", "--size=256M"], tag)
    ios = int(re.search(r"^ios (\d+) ", out, re.M).group(1))
    iops = float(re.search(r": ([\d.]+) IOPS", out).group(1))
    m = re.search(r"p50 ([\d.]+), p99 ([\d.]+)", out)
    return dict(iops=iops, p50=float(m.group(1)), p99=float(m.group(2)),
                cpu_us=cpu * 1e6 / max(ios, 1))

def iscsi_perf(rw, qd, tag):
    if rw != "randread":
        return None
    # SIGINT after RUNTIME seconds ends it; it then exits non-zero.
    out, cpu = run_cpu(["timeout", "-s", "INT", str(RUNTIME), "iscsi-perf", "-r", "-b", "8",
                        "-m", str(qd), ISCSI], tag, ok=(0, 1, 124, 130))
    out = out.replace("\r", "\n")
    m = re.findall(r"iops average (\d+)", out)
    if not m:
        sys.exit(f"iscsi-perf printed no IOPS:\n{out[-1000:]}")
    iops = float(m[-1])
    return dict(iops=iops, p50=float("nan"), p99=float("nan"),
                cpu_us=cpu * 1e6 / max(iops * RUNTIME, 1))

CLIENTS = {
    "nbd": [("fio (nbd engine)", lambda rw, qd, t: fio(rw, qd, t)),
            ("twinperf", lambda rw, qd, t: twinperf(NBD, rw, qd, t))],
    "nvme": [("twinblk-nvme perf", lambda rw, qd, t: nvme_perf(rw, qd, t)),
             ("twinperf", lambda rw, qd, t: twinperf(f"nvme+tcp://{NVME_ADDR}/{NQN}", rw, qd, t))],
    "nbdnull": [("fio (nbd engine)", lambda rw, qd, t: fio(rw, qd, t, NULL)),
                ("twinperf", lambda rw, qd, t: twinperf(NULL, rw, qd, t))],
    "iscsi": [("iscsi-perf", lambda rw, qd, t: iscsi_perf(rw, qd, t)),
              ("twinperf", lambda rw, qd, t: twinperf(ISCSI, rw, qd, t))],
}
TITLES = {"nbd": "NBD", "nvme": "NVMe/TCP", "iscsi": "iSCSI",
          "nbdnull": "NBD against nbdkit null (no server work: the clients' ceilings)"}

med = statistics.median
for proto in os.environ["PROTOS"].split():
    print(f"\n### {TITLES[proto]}: 4 KiB, one connection, "
          f"medians of {REPS} x {RUNTIME} s, clients in turns A B A B\n")
    print("| point | client | IOPS | p50 µs | p99 µs | client CPU µs/IO | IOPS per rep |")
    print("|---|---|---:|---:|---:|---:|---|")
    ratios = []
    for rw, qd in POINTS:
        res = {name: [] for name, _ in CLIENTS[proto]}
        for rep in range(REPS):
            for name, f in CLIENTS[proto]:
                tag = f"{proto}-{rw}-{qd}-{name.split()[0]}-{rep}"
                r = f(rw, qd, tag)
                if r is not None:
                    res[name].append(r)
        meds = {}
        for name, rs in res.items():
            if not rs:
                print(f"| {rw} QD{qd} | {name} | - | - | - | - | (no such mode) |")
                continue
            m = {k: med([r[k] for r in rs]) for k in ("iops", "p50", "p99", "cpu_us")}
            meds[name] = m
            reps = "/".join(f"{r['iops']:.0f}" for r in rs)
            lat = lambda v: "-" if v != v else f"{v:.1f}"
            print(f"| {rw} QD{qd} | {name} | {m['iops']:,.0f} | {lat(m['p50'])} | {lat(m['p99'])} "
                  f"| {m['cpu_us']:.2f} | {reps} |")
        if len(meds) < 2:
            continue
        (a, ma), (b, mb) = list(meds.items())
        ratios.append((f"{rw} QD{qd}", a, mb["iops"] / ma["iops"], mb["cpu_us"] / max(ma["cpu_us"], 1e-9)))
    print()
    for point, other, r, c in ratios:
        print(f"- {point}: twinperf / {other}: IOPS {r:.2f}x, client CPU per I/O {c:.2f}x")
PY
echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
