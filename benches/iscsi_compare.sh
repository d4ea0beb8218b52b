#!/usr/bin/env bash
# Side-by-side iSCSI benchmark: twinblk vs tgt (tgtd), same client, same kind of RAM backing.
#
#   RUNTIME=10 bash benches/iscsi_compare.sh
#
# Servers (one at a time, pinned to SERVER_CPU, clients to CLIENT_CPU, all on 127.0.0.1):
#   twinblk  `twinblk serve` with a 1 GiB malloc (RAM) volume, one reactor, iSCSI only;
#   tgt      `tgtd -f` with a 1 GiB file on /dev/shm (tmpfs: RAM) as LUN 1 (rdwr backing store).
# Points (4 KiB):
#   randread  QD1 and QD32: libiscsi's `iscsi-perf -r -b 8 -m QD` for RUNTIME seconds (random
#             reads; its "iops average" of the last second is taken);
#   write     QD1 and QD32: `qemu-img bench -w -t none -s 4096 -d QD -c COUNT` over iscsi://
#             (qemu-block-extra). iscsi-perf 1.19 has no write mode and Debian's fio has no
#             libiscsi engine, so writes are qemu-img's sequential 4 KiB writes, not random.
#   randwrite QD1 and QD32: twinperf's iSCSI engine (`twinperf URL --rw randwrite --bs 4k --qd QD
#             --seconds RUNTIME --warmup 1 --json`), REPEATS times in turn per server; the median
#             run's IOPS, p50 and p99 latency are printed (and every run's IOPS). twinperf keeps
#             its commands inside the target's CmdSN window (tgt opens one of 2 at login and
#             widens it as it answers).
#   tp-randread QD1 and QD32: the same with `--rw randread` (the same client as randwrite, so
#             reads and writes compare, with p99).
# Server CPU per I/O: utime+stime of the server process (/proc/<pid>/stat fields 14 and 15, in
# clock ticks of `getconf CLK_TCK`, all threads) before and after the point, divided by the I/Os
# of the point. A polling server (twinblk wait=poll) spends a whole core whatever the load; the
# default here is wait=adaptive.
#
# Environment:
#   RUNTIME      seconds per read point (default 10)
#   WRITES       4 KiB writes per write point (default 200000)
#   BIN          the twinblk binary (default: target/release/twinblk, built if missing)
#   TWINPERF     the twinperf binary (default: next to BIN, built if missing)
#   REPEATS      runs per random-write point (default 3; the median is reported)
#   POINTS       subset of: randread seqwrite randwrite tp-randread (default: all)
#   PORT         first TCP port (default 13260; PORT and PORT+1 are used)
#   SERVERS      subset/order of: twinblk twinblk-poll tgt (default: all three; twinblk-poll is
#                twinblk with wait = "poll": its reactor spins instead of sleeping when idle)
#   SERVER_CPU / CLIENT_CPU   cores (default 0 / 1)
#
# Needs: twinperf (this repository), iscsi-perf (libiscsi-bin), qemu-img with qemu-block-extra, tgt (tgtd, tgtadm; run as
# root), taskset. Servers listen on 127.0.0.1 only and are killed on exit (by their PID).

set -euo pipefail

RUNTIME=${RUNTIME:-10}
WRITES=${WRITES:-200000}
PORT=${PORT:-13260}
SERVERS=${SERVERS:-"twinblk twinblk-poll tgt"}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release/twinblk}
TWINPERF=${TWINPERF:-$(dirname "$BIN")/twinperf}
REPEATS=${REPEATS:-3}
POINTS=${POINTS:-"randread seqwrite randwrite tp-randread"}
WORK=$(mktemp -d /tmp/iscsi-compare.XXXXXX)
# qemu-img with the iSCSI driver: the host's, or the copy tools/qemu-iscsi.sh unpacks into
# target/qemu-iscsi/ when the host's qemu-utils has no matching qemu-block-extra (as the tests do).
QEMU_IMG=qemu-img
QEMU_MODDIR=""
PROBE=$(qemu-img info iscsi://127.0.0.1:9/iqn.2026-12.invalid:probe/0 2>&1 || true)
if [[ $PROBE == *"Unable to load module"* ]]; then
    [[ -x $ROOT/target/qemu-iscsi/usr/bin/qemu-img ]] || sh "$ROOT/tools/qemu-iscsi.sh" >&2
    QEMU_IMG=$ROOT/target/qemu-iscsi/usr/bin/qemu-img
    QEMU_MODDIR=$ROOT/target/qemu-iscsi/usr/lib/x86_64-linux-gnu/qemu
fi
TICK=$(getconf CLK_TCK)
SERVER_PID=""

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    # tgtd does not exit on SIGTERM while it has targets: remove them first, then make sure.
    if [[ -n ${TGT_CTL:-} ]]; then
        tgtadm -C "$TGT_CTL" --op delete --mode system --force > /dev/null 2>&1 || true
        TGT_CTL=""
    fi
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

cleanup() {
    stop_server
    rm -f /dev/shm/iscsi-compare-$$.img
    rm -rf "$WORK"
}
trap cleanup EXIT
trap "exit 130" INT TERM

if [[ ! -x $BIN ]]; then
    (cd "$ROOT" && cargo build --release -j1 --bin twinblk)
fi
if [[ ! -x $TWINPERF ]]; then
    (cd "$ROOT" && cargo build --release -j1 --bin twinperf)
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_twinblk() { # WAIT (adaptive: the default; poll: the reactor never sleeps)
    cat > "$WORK/twinblk.toml" <<EOF
[reactor]
cores = [$SERVER_CPU]
wait = "$1"
[nbd]
listen = []
[nvmf]
listen = []
[iscsi]
listen = ["127.0.0.1:$PORT"]
[control]
socket = ""
[[volume]]
name = "vol0"
backend = "malloc"
size = "1GiB"
EOF
    "$BIN" serve --config "$WORK/twinblk.toml" > "$WORK/twinblk.log" 2>&1 &
    SERVER_PID=$!
    URL="iscsi://127.0.0.1:$PORT/iqn.2026-11.io.twinblk:vol0/0"
}

start_tgt() {
    local ctl=$((PORT % 1000 + 100))
    TGT_CTL=$ctl
    truncate -s 1G /dev/shm/iscsi-compare-$$.img
    taskset -c "$SERVER_CPU" tgtd -f -C "$ctl" --iscsi portal=127.0.0.1:$((PORT + 1)) \
        > "$WORK/tgt.log" 2>&1 &
    SERVER_PID=$!
    sleep 1
    tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid 1 -T iqn.2026-11.bench:tgt
    tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 \
        -b /dev/shm/iscsi-compare-$$.img
    tgtadm -C "$ctl" --lld iscsi --op bind --mode target --tid 1 -I ALL
    URL="iscsi://127.0.0.1:$((PORT + 1))/iqn.2026-11.bench:tgt/1"
}

wait_ready() {
    for _ in $(seq 100); do
        if iscsi-inq "$URL" > /dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "server did not come up: $URL" >&2
    exit 1
}

# point NAME QD -> prints "iops cpu_us_per_io"
read_point() {
    local qd=$1 t0 t1 out iops
    t0=$(cpu_ticks "$SERVER_PID")
    out=$(timeout -s INT "$RUNTIME" taskset -c "$CLIENT_CPU" iscsi-perf -r -b 8 -m "$qd" "$URL" 2>&1 | tr '\r' '\n' || true)
    t1=$(cpu_ticks "$SERVER_PID")
    iops=$(echo "$out" | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}' || true)
    iops=${iops:-0}
    python3 -c "i=$iops; print(i, round(($t1-$t0)/$TICK*1e6/max(i*$RUNTIME,1), 2))"
}

write_point() {
    local qd=$1 t0 t1 out secs count=$WRITES
    t0=$(cpu_ticks "$SERVER_PID")
    out=$(QEMU_MODULE_DIR=$QEMU_MODDIR taskset -c "$CLIENT_CPU" "$QEMU_IMG" bench -f raw -w -t none \
        -s 4096 -d "$qd" -c "$count" "$URL" 2>&1 || true)
    t1=$(cpu_ticks "$SERVER_PID")
    secs=$(echo "$out" | grep -o 'completed in [0-9.]*' | awk '{print $3}' || true)
    [[ -n $secs ]] || echo "iscsi_compare: qemu-img bench failed: $out" >&2
    python3 -c "s=${secs:-0}; n=$count; i=n/s if s else 0; print(int(i), round(($t1-$t0)/$TICK*1e6/max(n,1), 2))"
}

# twinperf_point RW QD -> prints "iops cpu_us_per_io p50_us p99_us all_runs" (the median run of
# REPEATS)
twinperf_point() {
    local rw=$1 qd=$2 t0 t1 i
    rm -f "$WORK"/tp-*.json
    t0=$(cpu_ticks "$SERVER_PID")
    for i in $(seq "$REPEATS"); do
        taskset -c "$CLIENT_CPU" "$TWINPERF" "$URL" --rw "$rw" --bs 4k --qd "$qd" \
            --seconds "$RUNTIME" --warmup 1 --json-out "$WORK/tp-$i.json" \
            > /dev/null 2>&1 || true
    done
    t1=$(cpu_ticks "$SERVER_PID")
    ls "$WORK"/tp-*.json 2>/dev/null | python3 -c '
import json, sys
rs = [json.load(open(l.strip())) for l in sys.stdin if l.strip()]
rs = [r for r in rs if r.get("ios")]
if not rs:
    print(0, 0, 0, 0, "-"); sys.exit()
rs.sort(key=lambda r: r["iops"])
m = rs[len(rs) // 2]
ios = sum(r["ios"] for r in rs)
cpu = ('"$t1"' - '"$t0"') / '"$TICK"' * 1e6 / ios
lat = m.get("latency_us") or {}
print(int(m["iops"]), round(cpu, 2), lat.get("p50", 0), lat.get("p99", 0),
      "/".join(str(int(r["iops"])) for r in rs))'
}

printf '%-12s %-10s %4s %10s %14s\n' server point qd IOPS "cpu us/IO"
for s in $SERVERS; do
    case $s in
        twinblk) start_twinblk adaptive ;;
        twinblk-poll) start_twinblk poll ;;
        tgt) start_tgt ;;
        *) echo "unknown server $s" >&2; exit 1 ;;
    esac
    wait_ready
    for qd in 1 32; do
        if [[ " $POINTS " == *" randread "* ]]; then
            read -r iops cpu < <(read_point "$qd")
            printf '%-12s %-10s %4s %10s %14s\n' "$s" randread "$qd" "$iops" "$cpu"
        fi
        if [[ " $POINTS " == *" seqwrite "* ]]; then
            read -r iops cpu < <(write_point "$qd")
            printf '%-12s %-10s %4s %10s %14s\n' "$s" seqwrite "$qd" "$iops" "$cpu"
        fi
        for p in randwrite tp-randread; do
            if [[ " $POINTS " == *" $p "* ]]; then
                read -r iops cpu p50 p99 all < <(twinperf_point "${p#tp-}" "$qd")
                printf '%-12s %-10s %4s %10s %14s   p50 %s us, p99 %s us, runs %s\n' "$s" "$p" \
                    "$qd" "$iops" "$cpu" "$p50" "$p99" "$all"
            fi
        done
    done
    stop_server
done
