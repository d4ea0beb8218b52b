#!/usr/bin/env bash
# Side-by-side: the same RAM volume served by one twinblk site vs mirrored synchronously across
# two twinblk processes on loopback (site a leads; the client writes at site a), 4 KiB random
# write at queue depth 1 and 32, one job/queue, through NBD (fio's nbd engine) and NVMe/TCP
# (twinblk-nvme perf, our userspace initiator: one I/O queue).
#
#   RUNTIME=5 REPS=3 bash benches/mirror_compare.sh
#
# Each repetition starts every configuration fresh. Reported per point: the MEDIAN over the
# repetitions of IOPS, clat p50 and p99; for the mirrored runs also ACK messages on the wire per
# write (the follower's acks_sent delta / the leader's updates delta, from the control socket's
# mirror_status) and the link's PING round trip (median, measured by the sites themselves).
# Placement: single site on core 0; mirrored: site a on core 0, site b on CORE_B (this machine
# has 2 cores, so site b shares a core with fio or with site a); fio on core 1.
#
# Environment: RUNTIME (default 5), REPS (3), RAMP (1), BASE_PORT (12800), KEEP=1 keeps logs,
# WAIT_A (wait policy of the single site and of site a, default interrupt), WAIT_B (site b,
# default interrupt), CORE_B (site b's core, default 0). The defaults put both sites on core 0,
# each blocking when idle so they share it fairly, and leave core 1 to the client: on this
# 2-core machine a polling site would take the core its peer needs (site a polling and site b
# on core 0 gave 0.53x at QD32 over NVMe/TCP in a 1-rep check; site b on the client's core,
# 0.59x over NBD).
# Needs: cargo, fio (nbd engine), python3, taskset. Listens on 127.0.0.1 only; always cleans up.

set -euo pipefail
RUNTIME=${RUNTIME:-5}
REPS=${REPS:-3}
RAMP=${RAMP:-1}
BASE_PORT=${BASE_PORT:-12800}
KEEP=${KEEP:-0}
WAIT_A=${WAIT_A:-interrupt}
WAIT_B=${WAIT_B:-interrupt}
CORE_B=${CORE_B:-0}
[[ $RUNTIME =~ ^[0-9]+$ && $REPS =~ ^[0-9]+$ && $RAMP =~ ^[0-9]+$ && $BASE_PORT =~ ^[0-9]+$ ]] ||
    { echo "mirror_compare: RUNTIME, REPS, RAMP, BASE_PORT must be numbers" >&2; exit 1; }
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin twinblk --bin twinblk-ctl --bin twinblk-nvme
BIN=$PWD/target/release/twinblk
CTL=$PWD/target/release/twinblk-ctl
NVME=$PWD/target/release/twinblk-nvme
WORK=$(mktemp -d /tmp/mirror_compare.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ $KEEP == 1 ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

site_cfg() { # name peer core nbd_port repl_port peer_repl_port mirror(true|false) wait nvmf_port
    local mirror_section=""
    if [[ $7 == true ]]; then
        mirror_section="[mirror]
site = \"$1\"
peer_site = \"$2\"
listen = [\"127.0.0.1:$5\"]
peer = \"127.0.0.1:$6\""
    fi
    cat >"$WORK/$1.toml" <<CFG
[reactor]
cores = [$3]
wait = "$8"
[nbd]
listen = ["127.0.0.1:$4"]
[nvmf]
listen = ["127.0.0.1:$9"]
[control]
socket = "$WORK/$1.sock"
$mirror_section
[[volume]]
name = "vol0"
backend = "malloc"
size = "1GiB"
mirror = $7
CFG
}

SCRIPT=mirror_compare
# shellcheck source=benches/sites.sh
source benches/sites.sh # (the working directory is the repository root here)

RESULTS=$WORK/results.jsonl
port=$BASE_PORT
for rep in $(seq "$REPS"); do
    for proto in nbd nvmf; do
    for mode in single mirrored; do
        for qd in 1 32; do
            port=$((port + 4))
            if [[ $mode == single ]]; then
                site_cfg a b 0 "$port" 0 0 false "$WAIT_A" $((port + 3))
                start a
            else
                site_cfg a b 0 "$port" $((port + 1)) $((port + 2)) true "$WAIT_A" $((port + 3))
                site_cfg b a "$CORE_B" $((port + 100)) $((port + 2)) $((port + 1)) true "$WAIT_B" $((port + 103))
                start a
                start b
                wait_link
                mstat a >"$WORK/a.before"
                mstat b >"$WORK/b.before"
            fi
            echo "mirror_compare: rep $rep/$REPS $proto $mode qd$qd" >&2
            if [[ $proto == nbd ]]; then
                taskset -c 1 fio --name=w --ioengine=nbd --uri="nbd://127.0.0.1:$port/vol0" \
                    --rw=randwrite --bs=4k --iodepth="$qd" --size=256M --time_based \
                    --runtime="$RUNTIME" --ramp_time="$RAMP" --randrepeat=0 \
                    --output-format=json >"$WORK/client.out" 2>"$WORK/client.err" ||
                    { cat "$WORK/client.err" >&2; exit 1; }
            else
                taskset -c 1 "$NVME" perf --addr "127.0.0.1:$((port + 3))" \
                    --nqn nqn.2026-11.io.twinblk:vol0 --queues 1 --qd "$qd" --rw randwrite \
                    --bs 4k --size 256M --seconds "$RUNTIME" >"$WORK/client.out" 2>"$WORK/client.err" ||
                    { cat "$WORK/client.err" >&2; exit 1; }
            fi
            after_a=null; after_b=null; before_a=null; before_b=null
            if [[ $mode == mirrored ]]; then
                before_a=$(cat "$WORK/a.before"); before_b=$(cat "$WORK/b.before")
                after_a=$(mstat a); after_b=$(mstat b)
            fi
            python3 - "$WORK/client.out" "$proto" "$mode" "$qd" "$before_a" "$before_b" "$after_a" "$after_b" >>"$RESULTS" <<'PY'
import json, re, sys
raw = open(sys.argv[1]).read()
proto, mode, qd = sys.argv[2], sys.argv[3], int(sys.argv[4])
if proto == "nbd":
    fio = json.loads(raw[raw.index("{"):])["jobs"][0]["write"]  # fio may print a line first
    iops = fio["iops"]
    p50 = fio["clat_ns"]["percentile"]["50.000000"] / 1000
    p99 = fio["clat_ns"]["percentile"]["99.000000"] / 1000
else:
    iops = float(re.search(r"([0-9.]+) IOPS", raw).group(1))
    lat = re.search(r"p50 ([0-9.]+), p99 ([0-9.]+)", raw)
    p50, p99 = float(lat.group(1)), float(lat.group(2))
ba, bb, aa, ab = (json.loads(x) for x in sys.argv[5:9])
r = {"proto": proto, "mode": mode, "qd": qd, "iops": iops, "p50": p50, "p99": p99}
if aa:
    updates = aa[0]["updates"] - ba[0]["updates"]
    acks = ab[0]["acks_sent"] - bb[0]["acks_sent"]
    r["acks_per_write"] = acks / updates if updates else None
    r["rtt_us"] = aa[0]["rtt_p50_us"]
print(json.dumps(r))
PY
            stop_all
        done
    done
    done
done

python3 - "$RESULTS" "$RUNTIME" "$REPS" "site a/single: core 0 wait $WAIT_A; site b: core $CORE_B wait $WAIT_B; fio: core 1" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(proto, mode, qd, k):
    v = [r[k] for r in rows if r["proto"] == proto and r["mode"] == mode and r["qd"] == qd and r.get(k) is not None]
    return st.median(v) if v else float("nan")
print(f"\n4 KiB randwrite, RAM volume, medians of {sys.argv[3]} reps x {sys.argv[2]} s; {sys.argv[4]}\n")
print("| client | QD | single IOPS | mirrored IOPS | ratio | single p50/p99 µs | mirrored p50/p99 µs | ACKs per write | link RTT p50 µs |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
names = {"nbd": "NBD (fio)", "nvmf": "NVMe/TCP (twinblk-nvme)"}
for proto in ("nbd", "nvmf"):
    for qd in (1, 32):
        si, mi = med(proto, "single", qd, "iops"), med(proto, "mirrored", qd, "iops")
        print(f"| {names[proto]} | {qd} | {si:,.0f} | {mi:,.0f} | {mi/si:.2f}x | {med(proto,'single',qd,'p50'):.1f} / {med(proto,'single',qd,'p99'):.1f} "
              f"| {med(proto,'mirrored',qd,'p50'):.1f} / {med(proto,'mirrored',qd,'p99'):.1f} | {med(proto,'mirrored',qd,'acks_per_write'):.3f} "
              f"| {med(proto,'mirrored',qd,'rtt_us'):.1f} |")
print()
for proto in ("nbd", "nvmf"):
    added = med(proto, "mirrored", 1, "p50") - med(proto, "single", 1, "p50")
    rtt = med(proto, "mirrored", 1, "rtt_us")
    r32 = med(proto, "mirrored", 32, "iops") / med(proto, "single", 32, "iops")
    a32 = med(proto, "mirrored", 32, "acks_per_write")
    print(f"- {names[proto]}: mirrored / single IOPS at QD32: {r32:.2f}x (goal >= 0.85x: {'MET' if r32 >= 0.85 else 'NOT MET'})")
    print(f"- {names[proto]}: ACK messages per write at QD32: {a32:.3f} (goal <= 0.2: {'MET' if a32 <= 0.2 else 'NOT MET'})")
    print(f"- {names[proto]}: added p50 at QD1: {added:.1f} µs vs link RTT {rtt:.1f} µs = {added/rtt:.2f}x RTT (goal <= 1.5x: {'MET' if added <= 1.5*rtt else 'NOT MET'})")
PY
