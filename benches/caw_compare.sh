#!/usr/bin/env bash
# Side-by-side: what the commands that only a mirrored volume's leader decides cost. The same
# RAM volume served by one twinblk site, then mirrored synchronously across two twinblk
# processes on loopback (site a leads) with the client at site a (the leader) and at site b
# (the follower); at queue depth 1 over NVMe/TCP (nvme_latency, on our userspace initiator):
# 4 KiB writes to random blocks among the first 1024, one-block fused Compare and Write there
# (each expecting the block's last written content, so each succeeds), and Reservation
# Register + Unregister pairs (docs/mirror-protocol.md "Compare and write" and "Volume
# metadata", docs/nvmf.md "Reservations of a mirrored volume").
#
#   REPS=3 bash benches/caw_compare.sh
#
# The volume has 4 KiB blocks, so a one-block write or compare-and-write moves 4 KiB.
# Each repetition starts every configuration fresh, and each run uses its own host id.
# Reported per configuration: the MEDIAN over the repetitions of each p50 and p99, the CAW's
# added p50 over a plain write (difference of those medians), and for the mirrored runs the
# link's PING round trip (median, measured by the sites; read from site a's mirror_status
# after the run). Reservations are kept in memory (no [nvmf] state_dir, so no state file is
# written and fsynced per change), as in mirror_compare.sh; RESV_STATE=1 gives each site a
# state_dir in the work directory.
# Placement: the single site and both mirrored sites on core 0, each with wait = "interrupt"
# (blocking when idle, so they share the core fairly); the client on core 1.
#
# Environment: OPS (timed commands per measure, default 2000), REPS (3), BASE_PORT (13800),
# KEEP=1 keeps logs, RESV_STATE=1 persists reservations. Needs: cargo, python3, taskset.
# Listens on 127.0.0.1 only (NVMe/TCP and mirror links; NBD off); always cleans up.

set -euo pipefail
OPS=${OPS:-2000}
REPS=${REPS:-3}
BASE_PORT=${BASE_PORT:-13800}
KEEP=${KEEP:-0}
RESV_STATE=${RESV_STATE:-0}
[[ $OPS =~ ^[0-9]+$ && $REPS =~ ^[0-9]+$ && $BASE_PORT =~ ^[0-9]+$ ]] ||
    { echo "caw_compare: OPS, REPS, BASE_PORT must be numbers" >&2; exit 1; }
((OPS >= 2 && REPS >= 1)) || { echo "caw_compare: OPS must be >= 2 and REPS >= 1" >&2; exit 1; }
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin twinblk --bin twinblk-ctl --bin nvme_latency
BIN=$PWD/target/release/twinblk
CTL=$PWD/target/release/twinblk-ctl
LAT=$PWD/target/release/nvme_latency
NQN=nqn.2026-11.io.twinblk:vol0
WORK=$(mktemp -d /tmp/caw_compare.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ $KEEP == 1 ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
# The sites' shared key: replication links are authenticated (mirror.witness_key_file).
head -c 32 /dev/urandom >"$WORK/link.key"

site_cfg() { # name peer nvmf_port repl_port peer_repl_port mirror(true|false)
    local mirror_section="" state=""
    if [[ $6 == true ]]; then
        mirror_section="[mirror]
site = \"$1\"
peer_site = \"$2\"
listen = [\"127.0.0.1:$4\"]
peer = \"127.0.0.1:$5\"
witness_key_file = \"$WORK/link.key\""
    fi
    if [[ $RESV_STATE == 1 ]]; then
        mkdir -p "$WORK/$1.state"
        state="state_dir = \"$WORK/$1.state\""
    fi
    cat >"$WORK/$1.toml" <<CFG
[reactor]
cores = [0]
wait = "interrupt"
[nbd]
listen = []
[nvmf]
listen = ["127.0.0.1:$3"]
$state
[control]
socket = "$WORK/$1.sock"
$mirror_section
[[volume]]
name = "vol0"
backend = "malloc"
size = "1GiB"
block_size = 4096
mirror = $6
CFG
}

SCRIPT=caw_compare
# shellcheck source=benches/sites.sh
source benches/sites.sh # (the working directory is the repository root here)

RESULTS=$WORK/results.jsonl
port=$BASE_PORT
host=0
for rep in $(seq "$REPS"); do
    for conf in single leader follower; do
        port=$((port + 4))
        host=$((host + 1))
        if [[ $conf == single ]]; then
            site_cfg a b "$port" 0 0 false
            start a
            target=$port
        else
            # Site a sorts first: it leads the volume.
            site_cfg a b "$port" $((port + 1)) $((port + 2)) true
            site_cfg b a $((port + 3)) $((port + 2)) $((port + 1)) true
            start a
            start b
            wait_link
            if [[ $conf == leader ]]; then target=$port; else target=$((port + 3)); fi
        fi
        echo "caw_compare: rep $rep/$REPS $conf (host id $host)" >&2
        taskset -c 1 "$LAT" --addr "127.0.0.1:$target" --nqn "$NQN" --ops "$OPS" \
            --host-id "$host" >"$WORK/client.out" 2>"$WORK/client.err" ||
            { cat "$WORK/client.out" "$WORK/client.err" >&2; exit 1; }
        status=null
        if [[ $conf != single ]]; then
            status=$(mstat a)
        fi
        python3 - "$WORK/client.out" "$conf" "$status" >>"$RESULTS" <<'PY'
import json, sys
r = {"conf": sys.argv[2]}
for line in open(sys.argv[1]):
    kv = dict(f.split("=", 1) for f in line.split())
    if kv["measure"] in ("write", "caw") and kv["bytes"] != "4096":
        sys.exit(f"caw_compare: {kv['measure']} moved {kv['bytes']} bytes per command, not 4096")
    for k in ("p50_us", "p99_us"):
        r[f"{kv['measure']}_{k}"] = float(kv[k])
for m in ("write", "caw", "resv"):
    if f"{m}_p50_us" not in r:
        sys.exit(f"caw_compare: nvme_latency printed no {m} line")
st = json.loads(sys.argv[3])
if st:
    if st[0]["state"] != "up":
        sys.exit(f"caw_compare: link of site a is {st[0]['state']} after the run")
    r["rtt_us"] = st[0]["rtt_p50_us"]
print(json.dumps(r))
PY
        stop_all
    done
done

python3 - "$RESULTS" "$OPS" "$REPS" "$RESV_STATE" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(conf, k):
    v = [r[k] for r in rows if r["conf"] == conf and r.get(k) is not None]
    return st.median(v) if v else float("nan")
resv = "persisted (state_dir)" if sys.argv[4] == "1" else "in memory"
print(f"\nQD1 over NVMe/TCP, RAM volume, 1-block (4 KiB) commands on the first 1024 blocks, "
      f"{sys.argv[2]} commands per measure, medians of {sys.argv[3]} reps; reservations {resv}; "
      f"sites: core 0 wait interrupt, client: core 1\n")
print("| configuration | plain write p50/p99 µs | CAW p50/p99 µs | reservation cmd p50/p99 µs "
      "| CAW added over plain write (p50 µs) | link RTT p50 µs |")
print("|---|---:|---:|---:|---:|---:|")
names = {"single": "single site (no mirror)", "leader": "mirrored, client at site a (leader)",
         "follower": "mirrored, client at site b (follower)"}
for conf in ("single", "leader", "follower"):
    cells = [f"{med(conf, m + '_p50_us'):.1f} / {med(conf, m + '_p99_us'):.1f}" for m in ("write", "caw", "resv")]
    added = med(conf, "caw_p50_us") - med(conf, "write_p50_us")
    rtt = "—" if conf == "single" else f"{med(conf, 'rtt_us'):.1f}"
    print(f"| {names[conf]} | {' | '.join(cells)} | {added:+.1f} | {rtt} |")
PY
