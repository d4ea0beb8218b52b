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
# mirror_status) and the link's PING round trip (median, measured by the sites themselves); and
# server CPU per I/O: utime+stime (/proc/<pid>/stat fields 14 and 15, CLK_TCK ticks, all threads)
# of every site process, sampled every 50 ms, used inside the client's measured window (fio:
# after its ramp, placed by its JSON; twinblk-nvme perf: its reported run time, ending when it
# exits; each end shrunk by 10% of the window, 0.2..1 s) / the I/Os completed in that time
# (the client's IOPS x the time), for both sites together and per site; and the client's CPU
# (fio's usr+sys; twinblk-nvme's utime+stime sampled the same way), in % of one core.
#
# Old tree side by side: OLD_BIN=/path/to/old/twinblk adds, for every point, a second set of
# sites run from that binary (same config files; twinblk-ctl from OLD_CTL, default the one next
# to OLD_BIN if there is one, else the new one; the clients are the new tree's) in the same
# rotation (new and old alternate at each point, the first of the two swapping every
# repetition), and the report adds the old tree's table and new/old ratios. For example:
#
#   (cd /work/before && CARGO_TARGET_DIR=/work/before/target cargo build --release -j1 --bin twinblk --bin twinblk-ctl)
#   OLD_BIN=/work/before/target/release/twinblk RUNTIME=5 REPS=5 bash benches/mirror_compare.sh
# Placement: single site on core 0; mirrored: site a on core 0, site b on CORE_B (this machine
# has 2 cores, so site b shares a core with fio or with site a); fio on core 1.
#
# Environment: RUNTIME (default 5), REPS (3), RAMP (1), BASE_PORT (12800), KEEP=1 keeps logs,
# CDP=disk|ram (a CDP journal under every site's volume, see cdp_section below; default none;
# OLD_CDP=none|disk|ram gives the OLD_BIN side its own setting, so with OLD_BIN the same binary
# CDP on and off run side by side in one run: `CDP=ram OLD_CDP=none OLD_BIN=target/release/twinblk`),
# CDP_SEGMENT (the journal's segment_size, default 256MiB), CDP_RETAIN (its retention_bytes,
# default none: the journal grows), WARM (MiB of 64 KiB random writes through site a's NBD
# export before each point's client, default 0: with CDP_RETAIN, enough to fill the journal to
# its retention first measures the steady state, segments consolidated and recycled while the
# point runs; every configuration gets the same warm-up; the steady state also needs the base
# copy whole: consolidation allocates each of its pages when it first reaches one, so a WARM
# under about four times the 1 GiB volume measures that first fill (session 24: CDP in memory
# twice the server CPU of CDP off after WARM=1536; use WARM=4096), BACKGROUND_CPU=N (every site's
# [reactor] background_cores = [N]: the daemons' own threads, CDP's among them, on CPU N
# instead of every CPU no reactor takes, here the client's; the OLD_BIN must know the field),
# OLD_BIN and OLD_CTL (above; default none),
# WAIT_A (wait policy of the single site and of site a, default interrupt), WAIT_B (site b,
# default interrupt), CORE_B (site b's core, default 0). The defaults put both sites on core 0,
# each blocking when idle so they share it fairly, and leave core 1 to the client: on this
# 2-core machine a polling site would take the core its peer needs (site a polling and site b
# on core 0 gave 0.53x at QD32 over NVMe/TCP in a 1-rep check; site b on the client's core,
# 0.59x over NBD).
# STATE=1 gives each mirrored site a state_dir (under the work directory), which the leader's
# activity log needs (docs/mirror-protocol.md, "Activity log"); ACTLOG=true|false (default
# true, only with STATE=1) switches the log, to measure its cost, e.g.
#   STATE=1 ACTLOG=true bash benches/mirror_compare.sh; STATE=1 ACTLOG=false bash benches/mirror_compare.sh
# (fio writes 256 MiB: 64 extents of 4 MiB, so after the first writes the log is not written
# again; ACTLOG_EXTENTS=N, default 1024, makes it smaller to measure a log that keeps changing.
# A tree without the activity log refuses these fields: not with an older OLD_BIN. To compare
# the log on and off side by side, in turns, give the same binary as OLD_BIN and the old
# side's setting as OLD_ACTLOG, e.g.
#   STATE=1 ACTLOG=true OLD_ACTLOG=false OLD_BIN=target/release/twinblk bash benches/mirror_compare.sh
# (the report's "old tree" is then the same tree with the log off).)
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
OLD_BIN=${OLD_BIN:-}
OLD_CTL=${OLD_CTL:-}
[[ $RUNTIME =~ ^[0-9]+$ && $REPS =~ ^[0-9]+$ && $RAMP =~ ^[0-9]+$ && $BASE_PORT =~ ^[0-9]+$ ]] ||
    { echo "mirror_compare: RUNTIME, REPS, RAMP, BASE_PORT must be numbers" >&2; exit 1; }
((RUNTIME >= 1)) || { echo "mirror_compare: RUNTIME must be >= 1" >&2; exit 1; }
INVOCATION="CDP=${CDP:-none}${OLD_CDP:+ OLD_CDP=$OLD_CDP}${CDP_SEGMENT:+ CDP_SEGMENT=$CDP_SEGMENT}${CDP_RETAIN:+ CDP_RETAIN=$CDP_RETAIN}${WARM:+ WARM=$WARM}${BACKGROUND_CPU:+ BACKGROUND_CPU=$BACKGROUND_CPU} RUNTIME=$RUNTIME REPS=$REPS RAMP=$RAMP BASE_PORT=$BASE_PORT WAIT_A=$WAIT_A WAIT_B=$WAIT_B CORE_B=$CORE_B bash benches/mirror_compare.sh"
[[ ${STATE:-0} == 1 ]] && INVOCATION="STATE=1 ACTLOG=${ACTLOG:-true}${ACTLOG_EXTENTS:+ ACTLOG_EXTENTS=$ACTLOG_EXTENTS}${OLD_ACTLOG:+ OLD_ACTLOG=$OLD_ACTLOG} $INVOCATION"
if [[ -n $OLD_BIN ]]; then
    [[ -f $OLD_BIN && -x $OLD_BIN ]] || { echo "mirror_compare: OLD_BIN=$OLD_BIN is not an executable file" >&2; exit 1; }
    OLD_BIN=$(cd "$(dirname "$OLD_BIN")" && pwd)/$(basename "$OLD_BIN")
    if [[ -z $OLD_CTL && -x $(dirname "$OLD_BIN")/twinblk-ctl ]]; then
        OLD_CTL=$(dirname "$OLD_BIN")/twinblk-ctl
    fi
    INVOCATION="OLD_BIN=$OLD_BIN${OLD_CTL:+ OLD_CTL=$OLD_CTL} $INVOCATION"
fi
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin twinblk --bin twinblk-ctl --bin twinblk-nvme
BIN=$PWD/target/release/twinblk
CTL=$PWD/target/release/twinblk-ctl
NVME=$PWD/target/release/twinblk-nvme
NEW_BIN=$BIN
NEW_CTL=$CTL
OLD_CTL=${OLD_CTL:-$CTL}
WORK=$(mktemp -d /tmp/mirror_compare.XXXXXX)
PIDS=()
CLIENT_PID=""
cleanup() {
    for p in "${PIDS[@]}" $CLIENT_PID $CPU_PID; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -f $WORK/cdp_dirs ]]; then xargs -r rm -rf <"$WORK/cdp_dirs"; fi
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
peer = \"127.0.0.1:$6\"
$KEY_LINE"
        if [[ ${STATE:-0} == 1 ]]; then
            mkdir -p "$WORK/state-$1"
            mirror_section="$mirror_section
state_dir = \"$WORK/state-$1\"
activity_log = ${ACTLOG_T:-${ACTLOG:-true}}
activity_log_extents = ${ACTLOG_EXTENTS:-1024}"
        fi
    fi
    cat >"$WORK/$1.toml" <<CFG
[reactor]
cores = [$3]
wait = "$8"
${BACKGROUND_CPU:+background_cores = [$BACKGROUND_CPU]}
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
$(cdp_section "$1")
CFG
}

# CDP=disk|ram: a CDP journal under every site's volume (docs/cdp-format.md), in CDP_DISK_DIR
# (default /var/tmp) or CDP_RAM_DIR (default /dev/shm), one fresh directory per site start.
CDP=${CDP:-none}
OLD_CDP=${OLD_CDP:-}
for c in "$CDP" ${OLD_CDP:+"$OLD_CDP"}; do
    [[ $c == none || $c == disk || $c == ram ]] || { echo "mirror_compare: CDP and OLD_CDP must be none, disk or ram" >&2; exit 1; }
done
cdp_section() { # site name (CDP_T: this tree's setting, OLD_CDP for the old one)
    local cdp=${CDP_T:-$CDP}
    [[ $cdp == none ]] && return 0
    local base
    if [[ $cdp == disk ]]; then base=${CDP_DISK_DIR:-/var/tmp}; else base=${CDP_RAM_DIR:-/dev/shm}; fi
    local d
    d=$(mktemp -d "$base/mirror_compare_cdp.XXXXXX")
    echo "$d" >>"$WORK/cdp_dirs"
    printf '[volume.cdp]\ndir = "%s/%s"\nsegment_size = "%s"\n' "$d" "$1" "${CDP_SEGMENT:-256MiB}"
    [[ -n ${CDP_RETAIN:-} ]] && printf 'retention_bytes = "%s"\n' "$CDP_RETAIN"
    return 0
}

SCRIPT=mirror_compare
# shellcheck source=benches/sites.sh
source benches/sites.sh # (the working directory is the repository root here)
cpu_init

# tree_of DIR: the git commit checked out where DIR is (+ "with uncommitted changes").
tree_of() {
    local c
    c=$(git -C "$1" rev-parse --short HEAD 2>/dev/null) || { echo "not in a git tree"; return; }
    if [[ -n $(git -C "$1" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
        c="$c with uncommitted changes"
    fi
    echo "$c"
}

# The replication link key. Since link authentication (7476751) a site with [mirror] requires
# mirror.witness_key_file (the sites' shared key); a tree before it takes that key only together
# with a witness, which this benchmark does not run. So each binary is asked (check-config on a
# mirrored site config) whether it runs without the key, else with it: KEY_LINE_<tree> is the
# line its [mirror] sections get ("" for none).
LINK_KEY=$WORK/link.key
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$LINK_KEY")
KEY_LINE="" KEY_LINE_new="" KEY_LINE_old=""
key_line_for() { # TREE BIN (sets KEY_LINE_<TREE>; leaves BIN's check-config output in $WORK/check.TREE)
    local line
    for line in "" "witness_key_file = \"$LINK_KEY\""; do
        KEY_LINE=$line
        # (without a CDP section: its directory differs at each call, and OLD_CDP may differ)
        CDP_T=none site_cfg a b 0 1 2 3 true "$WAIT_A" 4
        if "$2" check-config "$WORK/a.toml" >"$WORK/check.$1" 2>&1; then
            if [[ $1 == old ]]; then KEY_LINE_old=$line; else KEY_LINE_new=$line; fi
            KEY_LINE=""
            rm -f "$WORK/a.toml"
            return 0
        fi
    done
    echo "mirror_compare: $2 check-config rejects the site config (with and without the link key):" >&2
    cat "$WORK/check.$1" >&2
    exit 1
}
key_desc() { if [[ -n $1 ]]; then echo "with the link key (mirror.witness_key_file)"; else echo "without a link key"; fi; }
key_line_for new "$NEW_BIN"
TREES="new"
BIN_DESC="new tree: \`$NEW_BIN\` ($(sha256sum "$NEW_BIN" | cut -c1-12), tree $(tree_of "$PWD")), mirrored sites $(key_desc "$KEY_LINE_new")"
if [[ -n $OLD_BIN ]]; then
    # The old binary must take the same command line and read the config files the same way
    # (but for the link key line).
    OLD_HELP=$("$OLD_BIN" serve --help 2>&1) || { echo "mirror_compare: $OLD_BIN serve --help failed" >&2; exit 1; }
    grep -q -- --config <<<"$OLD_HELP" || { echo "mirror_compare: $OLD_BIN serve has no --config" >&2; exit 1; }
    key_line_for old "$OLD_BIN"
    # Settings only the new tree has (at their defaults, which the report lists) are allowed;
    # anything the old tree reads differently is not.
    CFG_DIFF=$(diff <(grep -v '^witness_key_file = ' "$WORK/check.new") <(grep -v '^witness_key_file = ' "$WORK/check.old") | grep -E '^[<>]' || true)
    if grep -q '^>' <<<"$CFG_DIFF"; then
        echo "mirror_compare: $OLD_BIN reads the site config differently:" >&2; diff "$WORK/check.new" "$WORK/check.old" >&2; exit 1
    fi
    NEW_ONLY=$(grep '^<' <<<"$CFG_DIFF" | sed 's/^< //' | grep -v '^$' | tr '\n' ';' || true)
    TREES="new old"
    BIN_DESC="$BIN_DESC; old tree: \`$OLD_BIN\` ($(sha256sum "$OLD_BIN" | cut -c1-12), its directory's checkout $(tree_of "$(dirname "$OLD_BIN")")), ctl \`$OLD_CTL\`, mirrored sites $(key_desc "$KEY_LINE_old")"
    [[ -n $NEW_ONLY ]] && BIN_DESC="$BIN_DESC; settings only the new tree has, at their defaults: \`$NEW_ONLY\`"
fi
rm -f "$WORK"/check.*
read -r -a TREE_LIST <<<"$TREES"
NPOINTS=$((REPS * 8 * ${#TREE_LIST[@]}))
B_OFF=$((4 * NPOINTS + 4 > 100 ? 4 * NPOINTS + 4 : 100)) # site b's ports: above every site a's

# warm PORT: WARM MiB of 64 KiB random writes over the whole volume through site a's NBD
# export (not measured).
WARM=${WARM:-0}
[[ $WARM =~ ^[0-9]+$ ]] || { echo "mirror_compare: WARM is MiB (a number)" >&2; exit 1; }
warm() {
    ((WARM > 0)) || return 0
    taskset -c 1 fio --name=warm --ioengine=nbd --uri="nbd://127.0.0.1:$1/vol0" --rw=randwrite \
        --bs=64k --iodepth=8 --size=1G --io_size="${WARM}M" --output-format=json >/dev/null
}

RESULTS=$WORK/results.jsonl
DATE_START=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
port=$BASE_PORT
for rep in $(seq "$REPS"); do
    # new and old alternate at every point; which goes first swaps every repetition
    order=("${TREE_LIST[@]}")
    if ((${#TREE_LIST[@]} == 2 && rep % 2 == 0)); then order=("${TREE_LIST[1]}" "${TREE_LIST[0]}"); fi
    for proto in nbd nvmf; do
    for mode in single mirrored; do
        for qd in 1 32; do
        for tree in "${order[@]}"; do
            if [[ $tree == old ]]; then
                BIN=$OLD_BIN CTL=$OLD_CTL KEY_LINE=$KEY_LINE_old ACTLOG_T=${OLD_ACTLOG:-${ACTLOG:-true}}
                CDP_T=${OLD_CDP:-$CDP}
            else
                BIN=$NEW_BIN CTL=$NEW_CTL KEY_LINE=$KEY_LINE_new ACTLOG_T=${ACTLOG:-true}
                CDP_T=$CDP
            fi
            port=$((port + 4))
            if [[ $mode == single ]]; then
                site_cfg a b 0 "$port" 0 0 false "$WAIT_A" $((port + 3))
                start a
                SITE_PIDS=("${PIDS[-1]}")
                warm "$port"
            else
                site_cfg a b 0 "$port" $((port + 1)) $((port + 2)) true "$WAIT_A" $((port + 3))
                site_cfg b a "$CORE_B" $((port + B_OFF)) $((port + 2)) $((port + 1)) true "$WAIT_B" $((port + B_OFF + 3))
                start a
                start b
                SITE_PIDS=("${PIDS[-2]}" "${PIDS[-1]}")
                wait_link
                warm "$port"
                mstat a >"$WORK/a.before"
                mstat b >"$WORK/b.before"
            fi
            echo "mirror_compare: rep $rep/$REPS $proto $mode qd$qd${OLD_BIN:+ $tree tree}" >&2
            if [[ $proto == nbd ]]; then
                cpu_start "$WORK/cpu.samples" $((RUNTIME + RAMP + 70)) "${SITE_PIDS[@]}"
                taskset -c 1 fio --name=w --ioengine=nbd --uri="nbd://127.0.0.1:$port/vol0" \
                    --rw=randwrite --bs=4k --iodepth="$qd" --size=256M --time_based \
                    --runtime="$RUNTIME" --ramp_time="$RAMP" --randrepeat=0 \
                    --output-format=json >"$WORK/client.out" 2>"$WORK/client.err" &
                CLIENT_PID=$!
            else
                # the client's CPU too: the sampler reads its pid from client.pid once it runs
                rm -f "$WORK/client.pid"
                cpu_start "$WORK/cpu.samples" $((RUNTIME + 70)) "${SITE_PIDS[@]}" "@$WORK/client.pid"
                taskset -c 1 "$NVME" perf --addr "127.0.0.1:$((port + 3))" \
                    --nqn nqn.2026-11.io.twinblk:vol0 --queues 1 --qd "$qd" --rw randwrite \
                    --bs 4k --size 256M --seconds "$RUNTIME" >"$WORK/client.out" 2>"$WORK/client.err" &
                CLIENT_PID=$!
                echo "$CLIENT_PID" >"$WORK/client.pid.tmp" && mv "$WORK/client.pid.tmp" "$WORK/client.pid"
            fi
            wait "$CLIENT_PID" || { cat "$WORK/client.err" >&2; exit 1; }
            CLIENT_PID=""
            end_ms=$(date +%s%3N)
            cpu_stop
            if [[ $proto == nbd ]]; then
                cpu=$(cpu_window "$WORK/cpu.samples" "fio:$WORK/client.out") || cpu=null
            else
                secs=$(sed -n 's/.* in \([0-9.]*\) s: .*/\1/p' "$WORK/client.out")
                cpu=$(cpu_window "$WORK/cpu.samples" "$end_ms" "$(awk -v s="$secs" 'BEGIN { print s * 1000 }')") || cpu=null
            fi
            after_a=null; after_b=null; before_a=null; before_b=null
            if [[ $mode == mirrored ]]; then
                before_a=$(cat "$WORK/a.before"); before_b=$(cat "$WORK/b.before")
                after_a=$(mstat a); after_b=$(mstat b)
            fi
            python3 - "$WORK/client.out" "$proto" "$mode" "$qd" "$before_a" "$before_b" "$after_a" "$after_b" "$tree" "$cpu" >>"$RESULTS" <<'PY'
import json, re, sys
raw = open(sys.argv[1]).read()
proto, mode, qd = sys.argv[2], sys.argv[3], int(sys.argv[4])
client_cpu = None
if proto == "nbd":
    job = json.loads(raw[raw.index("{"):])["jobs"][0]  # fio may print a line first
    fio = job["write"]
    iops = fio["iops"]
    p50 = fio["clat_ns"]["percentile"]["50.000000"] / 1000
    p99 = fio["clat_ns"]["percentile"]["99.000000"] / 1000
    client_cpu = job.get("usr_cpu", 0.0) + job.get("sys_cpu", 0.0)
else:
    iops = float(re.search(r"([0-9.]+) IOPS", raw).group(1))
    lat = re.search(r"p50 ([0-9.]+), p99 ([0-9.]+)", raw)
    p50, p99 = float(lat.group(1)), float(lat.group(2))
ba, bb, aa, ab = (json.loads(x) for x in sys.argv[5:9])
r = {"proto": proto, "mode": mode, "qd": qd, "iops": iops, "p50": p50, "p99": p99,
     "tree": sys.argv[9]}
if aa:
    updates = aa[0]["updates"] - ba[0]["updates"]
    acks = ab[0]["acks_sent"] - bb[0]["acks_sent"]
    r["acks_per_write"] = acks / updates if updates else None
    r["rtt_us"] = aa[0]["rtt_p50_us"]
cpu = json.loads(sys.argv[10])
sites = ["a", "b"][:2 if mode == "mirrored" else 1]
if cpu and iops > 0 and None not in cpu["cpu_s"][:len(sites)]:
    ios = iops * cpu["secs"]  # I/Os completed in the part of the window the CPU was taken over
    for i, site in enumerate(sites):
        r[f"cpu_us_{site}"] = cpu["cpu_s"][i] * 1e6 / ios
    r["cpu_us"] = sum(cpu["cpu_s"][:len(sites)]) * 1e6 / ios
if cpu and proto == "nvmf" and cpu["cpu_s"][len(sites)] is not None:
    client_cpu = 100.0 * cpu["cpu_s"][len(sites)] / cpu["secs"]
if client_cpu is not None:
    r["client_cpu"] = client_cpu
print(json.dumps(r))
PY
            stop_all
            # Each point's journals go with its sites (RAM journals would fill the memory).
            if [[ -f $WORK/cdp_dirs ]]; then xargs -r rm -rf <"$WORK/cdp_dirs"; : >"$WORK/cdp_dirs"; fi
        done
        done
    done
    done
done
DATE_END=$(date -u '+%Y-%m-%d %H:%M:%S UTC')

CPU_MODEL=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
echo
echo "- Command: \`$INVOCATION\`"
echo "- Machine: nproc=$(nproc), CPU: ${CPU_MODEL:-unknown}, kernel $(uname -r)"
echo "- Date: $DATE_START .. $DATE_END"
echo "- Binaries: $BIN_DESC; clients: $(fio --version), \`$NVME\` (new tree)"
echo "- Server CPU: utime+stime of every site process (\`/proc/PID/stat\` fields 14+15, all threads, CLK_TCK=$CLK_TCK) sampled every ${CPU_EVERY}s;" \
    "srv µs/IO = CPU seconds inside the client's measured window (each end shrunk by 10% of it, 0.2..1 s) / (the client's IOPS x that time);" \
    "mirrored: both sites (a+b) and each site. Client CPU: fio's usr+sys; twinblk-nvme's utime+stime over the same window, % of one core."
python3 - "$RESULTS" "$RUNTIME" "$REPS" "site a/single: core 0 wait $WAIT_A; site b: core $CORE_B wait $WAIT_B; fio: core 1" "$TREES" <<'PY'
import json, math, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
trees = sys.argv[5].split()
both = len(trees) == 2
def vals(tree, proto, mode, qd, k):
    return [r[k] for r in rows if r.get("tree", "new") == tree and r["proto"] == proto
            and r["mode"] == mode and r["qd"] == qd and r.get(k) is not None]
def med(tree, proto, mode, qd, k):
    v = vals(tree, proto, mode, qd, k)
    return st.median(v) if v else float("nan")
def div(a, b):
    return a / b if b and not math.isnan(b) else float("nan")
def met(ok):
    return "MET" if ok else "NOT MET"
names = {"nbd": "NBD (fio)", "nvmf": "NVMe/TCP (twinblk-nvme)"}
import os
_oa = os.environ.get("OLD_ACTLOG")
_oc = os.environ.get("OLD_CDP")
title = {"new": "New tree", "old": "Old tree (OLD_BIN)"}
if _oc:
    title = {"new": f"CDP {os.environ.get('CDP', 'none')}", "old": f"CDP {_oc} (OLD_CDP)"}
if _oa:
    _na = os.environ.get("ACTLOG", "true")
    title = {"new": f"Activity log {'on' if _na == 'true' else 'off'}", "old": f"Activity log {'on' if _oa == 'true' else 'off'} (OLD_ACTLOG)"}
print(f"\n4 KiB randwrite, RAM volume, medians of {sys.argv[3]} reps x {sys.argv[2]} s; {sys.argv[4]}")
for tree in trees:
    m = lambda proto, mode, qd, k: med(tree, proto, mode, qd, k)
    pre = f"{title[tree]}, " if both else ""
    print()
    if both:
        print(f"{title[tree]}:")
        print()
    print("| client | QD | single IOPS | mirrored IOPS | ratio | single p50/p99 µs | mirrored p50/p99 µs | ACKs per write | link RTT p50 µs"
          " | single srv µs/IO | mirrored srv µs/IO (a+b) | mirrored a / b µs/IO | client CPU single / mirrored |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for proto in ("nbd", "nvmf"):
        for qd in (1, 32):
            si, mi = m(proto, "single", qd, "iops"), m(proto, "mirrored", qd, "iops")
            print(f"| {names[proto]} | {qd} | {si:,.0f} | {mi:,.0f} | {div(mi, si):.2f}x | {m(proto,'single',qd,'p50'):.1f} / {m(proto,'single',qd,'p99'):.1f} "
                  f"| {m(proto,'mirrored',qd,'p50'):.1f} / {m(proto,'mirrored',qd,'p99'):.1f} | {m(proto,'mirrored',qd,'acks_per_write'):.3f} "
                  f"| {m(proto,'mirrored',qd,'rtt_us'):.1f} | {m(proto,'single',qd,'cpu_us'):.2f} | {m(proto,'mirrored',qd,'cpu_us'):.2f} "
                  f"| {m(proto,'mirrored',qd,'cpu_us_a'):.2f} / {m(proto,'mirrored',qd,'cpu_us_b'):.2f} "
                  f"| {m(proto,'single',qd,'client_cpu'):.0f}% / {m(proto,'mirrored',qd,'client_cpu'):.0f}% |")
    print()
    for proto in ("nbd", "nvmf"):
        added = m(proto, "mirrored", 1, "p50") - m(proto, "single", 1, "p50")
        rtt = m(proto, "mirrored", 1, "rtt_us")
        r32 = div(m(proto, "mirrored", 32, "iops"), m(proto, "single", 32, "iops"))
        a32 = m(proto, "mirrored", 32, "acks_per_write")
        print(f"- {pre}{names[proto]}: mirrored / single IOPS at QD32: {r32:.2f}x (goal >= 0.85x: {met(r32 >= 0.85)})")
        print(f"- {pre}{names[proto]}: ACK messages per write at QD32: {a32:.3f} (goal <= 0.2: {met(a32 <= 0.2)})")
        print(f"- {pre}{names[proto]}: added p50 at QD1: {added:.1f} µs vs link RTT {rtt:.1f} µs = {div(added, rtt):.2f}x RTT (goal <= 1.5x: {met(added <= 1.5*rtt)})")
print()
print("Per repetition (for spread), IOPS and server µs/IO (both sites):")
print()
for tree in trees:
    for proto in ("nbd", "nvmf"):
        parts = []
        for mode in ("single", "mirrored"):
            for qd in (1, 32):
                parts.append(f"{mode} QD{qd} " + "/".join(f"{x:.0f}" for x in vals(tree, proto, mode, qd, "iops"))
                             + " IOPS, " + ("/".join(f"{x:.2f}" for x in vals(tree, proto, mode, qd, "cpu_us")) or "ERR") + " µs")
        print(f"- {title[tree] + ', ' if both else ''}{names[proto]}: " + "; ".join(parts))
missing = sorted({(r.get("tree", "new"), r["proto"], r["mode"], r["qd"]) for r in rows if r.get("cpu_us") is None})
for t, proto, mode, qd in missing:
    print(f"- WARNING: no server CPU for {t} {proto} {mode} QD{qd} in some repetition (window not covered by samples)")
if both:
    print()
    print("New tree / old tree (medians; IOPS > 1 and latency, server CPU per I/O < 1 mean the new tree is better):")
    print()
    print("| client | QD | mode | IOPS new/old | p50 new/old | p99 new/old | srv µs/IO new | srv µs/IO old | srv µs/IO new/old | site a new/old | site b new/old |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    falls, iops_r = [], []
    for proto in ("nbd", "nvmf"):
        for qd in (1, 32):
            for mode in ("single", "mirrored"):
                r = lambda k: div(med("new", proto, mode, qd, k), med("old", proto, mode, qd, k))
                cu = r("cpu_us")
                site_b = f"{r('cpu_us_b'):.2f}x" if mode == "mirrored" else "—"
                print(f"| {names[proto]} | {qd} | {mode} | {r('iops'):.2f}x | {r('p50'):.2f}x | {r('p99'):.2f}x "
                      f"| {med('new', proto, mode, qd, 'cpu_us'):.2f} | {med('old', proto, mode, qd, 'cpu_us'):.2f} | {cu:.2f}x "
                      f"| {r('cpu_us_a'):.2f}x | {site_b} |")
                iops_r.append((r("iops"), f"{names[proto]} {mode} QD{qd}"))
                if mode == "mirrored":
                    falls.append((cu, f"{names[proto]} QD{qd}"))
    print()
    print("- Mirrored write, server CPU per I/O new / old: " + ", ".join(f"{n} {c:.2f}x" for c, n in falls)
          + f" (goal < 1.00x at every mirrored point: {met(all(c < 1.0 for c, _ in falls))})")
    w = min(iops_r, key=lambda x: -1 if math.isnan(x[0]) else x[0])
    print(f"- Lowest new/old IOPS: {w[0]:.2f}x ({w[1]}); points with new < old: {sum(1 for x, _ in iops_r if not x >= 1.0)}/{len(iops_r)}"
          " (compare with the per-repetition spread above before calling a point slower)")
PY
