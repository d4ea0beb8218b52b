#!/usr/bin/env bash
# Side-by-side: one RAM volume served by a single twinblk site vs mirrored synchronously to a
# second site across twinlink (our WAN-link emulator, docs/twinlink.md) at each inter-site round
# trip in RTTS (default "0 5": 0 ms is twinlink without delay, so the proxy's own hop is in both
# mirrored columns). The client (fio's nbd engine) writes at site a (the leader):
#   - 4 KiB random write at QD1: latency (clat p50, p99), to see what one round trip adds;
#   - 4 KiB random write at QD32: IOPS;
#   - 128 KiB sequential write at QD32: MB/s (throughput across the bandwidth-delay product).
#
#   RUNTIME=5 REPS=3 bash benches/wan_compare.sh
#
# Every repetition runs every configuration fresh, in turns (single, then each RTT). Reported per
# point: the MEDIAN over the repetitions of IOPS, MB/s, clat p50 and p99; for mirrored points
# the link's PING round trip the sites measured (median, rtt_p50_us of mirror_status), and the
# ratios to single-site. Placement: both sites and twinlink on core 0, fio on core 1 (2 cores).
# Note: at QD32 the number of writes in flight bounds IOPS at QD / latency (Little's law): with
# a 5 ms round trip, 32 writes in flight give at most 32 / 5 ms = 6,400 IOPS however the
# acknowledgements are batched, so the 4 KiB QD32 point shows the bound and the 128 KiB point
# shows what batching across the bandwidth-delay product reaches.
# Environment: RUNTIME (5), REPS (3), RAMP (1), RTTS ("0 5"), BASE_PORT (13800), KEEP=1 keeps the
# work directory. Needs: cargo, fio (nbd engine), python3, taskset. Listens on 127.0.0.1 only;
# always cleans up.

set -euo pipefail
RUNTIME=${RUNTIME:-5}
REPS=${REPS:-3}
RAMP=${RAMP:-1}
RTTS=${RTTS:-"0 5"}
BASE_PORT=${BASE_PORT:-13800}
KEEP=${KEEP:-0}
[[ $RUNTIME =~ ^[0-9]+$ && $REPS =~ ^[0-9]+$ && $RAMP =~ ^[0-9]+$ && $BASE_PORT =~ ^[0-9]+$ ]] ||
    { echo "wan_compare: RUNTIME, REPS, RAMP, BASE_PORT must be numbers" >&2; exit 1; }
for r in $RTTS; do [[ $r =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "wan_compare: RTTS must be numbers (ms)" >&2; exit 1; }; done
INVOCATION="RUNTIME=$RUNTIME REPS=$REPS RAMP=$RAMP RTTS=\"$RTTS\" bash benches/wan_compare.sh"
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin twinblk --bin twinblk-ctl --bin twinlink
BIN=$PWD/target/release/twinblk
CTL=$PWD/target/release/twinblk-ctl
LINK=$PWD/target/release/twinlink
WORK=$(mktemp -d /tmp/wan_compare.XXXXXX)
PIDS=()
LINK_PID=""
CLIENT_PID=""
cleanup() {
    for p in "${PIDS[@]}" $LINK_PID $CLIENT_PID; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ $KEEP == 1 ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
SCRIPT=wan_compare
# shellcheck source=benches/sites.sh
source benches/sites.sh
LINK_KEY=$WORK/link.key
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$LINK_KEY")

site_cfg() { # name peer nbd_port repl_port peer_addr(host:port, or "" for a single site)
    local mirror_section="" mirror=false
    if [[ -n $5 ]]; then
        mirror=true
        mirror_section="[mirror]
site = \"$1\"
peer_site = \"$2\"
listen = [\"127.0.0.1:$4\"]
peer = \"$5\"
witness_key_file = \"$LINK_KEY\""
    fi
    cat >"$WORK/$1.toml" <<CFG
[reactor]
cores = [0]
wait = "interrupt"
[nbd]
listen = ["127.0.0.1:$3"]
[nvmf]
listen = []
[control]
socket = "$WORK/$1.sock"
$mirror_section
[[volume]]
name = "vol0"
backend = "malloc"
size = "1GiB"
mirror = $mirror
CFG
}

# start_link RTT A2B_LISTEN A_REPL B2A_LISTEN B_REPL
start_link() {
    taskset -c 0 "$LINK" serve --rtt-ms "$1" --control "$WORK/link.sock" \
        --link "a2b,127.0.0.1:$2,127.0.0.1:$5" --link "b2a,127.0.0.1:$4,127.0.0.1:$3" \
        >"$WORK/link.out" 2>"$WORK/link.log" &
    LINK_PID=$!
    for _ in $(seq 100); do grep -q '^control ' "$WORK/link.out" 2>/dev/null && return; sleep 0.05; done
    echo "wan_compare: twinlink did not start" >&2; cat "$WORK/link.log" >&2; exit 1
}

RESULTS=$WORK/results.jsonl
DATE_START=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
port=$BASE_PORT
for rep in $(seq "$REPS"); do
    for mode in single $RTTS; do
        for point in qd1 qd32 seq128k; do
            port=$((port + 8))
            if [[ $mode == single ]]; then
                site_cfg a b "$port" 0 ""
                start a
            else
                # Each site's peer is the twinlink listen address whose target is the other
                # site's replication listener (a: port+1, b: port+2; a2b: port+3, b2a: port+5).
                site_cfg a b "$port" $((port + 1)) "127.0.0.1:$((port + 3))"
                site_cfg b a $((port + 4)) $((port + 2)) "127.0.0.1:$((port + 5))"
                start_link "$mode" $((port + 3)) $((port + 1)) $((port + 5)) $((port + 2))
                start a
                start b
                wait_link
            fi
            # the sites run on core 0 (their config), fio on core 1
            case $point in
            qd1) args=(--rw=randwrite --bs=4k --iodepth=1) ;;
            qd32) args=(--rw=randwrite --bs=4k --iodepth=32) ;;
            seq128k) args=(--rw=write --bs=128k --iodepth=32) ;;
            esac
            echo "wan_compare: rep $rep/$REPS $mode $point" >&2
            taskset -c 1 fio --name=w --ioengine=nbd --uri="nbd://127.0.0.1:$port/vol0" \
                "${args[@]}" --size=512M --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
                --randrepeat=0 --output-format=json >"$WORK/client.out" 2>"$WORK/client.err" &
            CLIENT_PID=$!
            wait "$CLIENT_PID" || { cat "$WORK/client.err" >&2; exit 1; }
            CLIENT_PID=""
            rtt=null
            [[ $mode != single ]] && rtt=$(mstat a)
            python3 - "$WORK/client.out" "$mode" "$point" "$rtt" >>"$RESULTS" <<'PY'
import json, sys
raw = open(sys.argv[1]).read()
job = json.loads(raw[raw.index("{"):])["jobs"][0]
w = job["write"]
st = json.loads(sys.argv[4])
print(json.dumps({
    "mode": sys.argv[2], "point": sys.argv[3], "iops": w["iops"], "mbs": w["bw_bytes"] / 1e6,
    "p50": w["clat_ns"]["percentile"]["50.000000"] / 1000,
    "p99": w["clat_ns"]["percentile"]["99.000000"] / 1000,
    "link_rtt_us": st[0]["rtt_p50_us"] if st else None,
}))
PY
            # twinlink first: stop_all waits for every child of this shell.
            if [[ -n $LINK_PID ]]; then kill "$LINK_PID" 2>/dev/null || true; wait "$LINK_PID" 2>/dev/null || true; LINK_PID=""; fi
            stop_all
        done
    done
done

python3 - "$RESULTS" "$INVOCATION" "$DATE_START" "$RTTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
modes = ["single"] + sys.argv[4].split()
def med(mode, point, key):
    v = [r[key] for r in rows if r["mode"] == mode and r["point"] == point and r[key] is not None]
    return statistics.median(v) if v else None
print(f"wan_compare: {sys.argv[2]}")
print(f"started {sys.argv[3]}, {len(rows)} runs, medians over the repetitions")
print()
print("| point | " + " | ".join("single site" if m == "single" else f"mirrored, twinlink {m} ms RTT" for m in modes) + " |")
print("|---|" + "---|" * len(modes))
for point, key, unit in [("qd1", "p50", "p50 µs"), ("qd1", "p99", "p99 µs"), ("qd1", "iops", "IOPS"),
                         ("qd32", "iops", "IOPS"), ("qd32", "p50", "p50 µs"),
                         ("seq128k", "mbs", "MB/s"), ("seq128k", "p50", "p50 µs")]:
    base = med("single", point, key)
    cells = []
    for m in modes:
        v = med(m, point, key)
        if v is None:
            cells.append("-")
        elif m == "single" or not base:
            cells.append(f"{v:,.0f}")
        else:
            cells.append(f"{v:,.0f} ({v / base:.2f}x)")
    print(f"| {point} {unit} | " + " | ".join(cells) + " |")
for m in modes[1:]:
    r = med(m, "qd1", "link_rtt_us")
    add = None
    if med(m, "qd1", "p50") is not None and med("single", "qd1", "p50") is not None:
        add = med(m, "qd1", "p50") - med("single", "qd1", "p50")
    print(f"mirrored {m} ms: link PING RTT (sites' own median) {r} µs; QD1 p50 added over single site {add:,.0f} µs" if add is not None else f"mirrored {m} ms: no data")
PY
