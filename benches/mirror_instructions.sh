#!/usr/bin/env bash
# User-space instructions per mirrored 4 KiB write at QD1 (or IODEPTH), per site, counted by callgrind: a
# noise-free measure of the work the datapath does per write (wall-clock CPU on this VM varies
# by 5-25 % between repetitions; instructions by well under 1 %). It does not count the kernel,
# cache misses or stalls: use it beside benches/mirror_compare.sh, not instead of it.
#
#   N=20000 bash benches/mirror_instructions.sh
#   OLD_BIN=/work/before/target/release/twinblk bash benches/mirror_instructions.sh
#   IODEPTH=32 OLD_BIN=... bash benches/mirror_instructions.sh   (fio's queue depth; default 1)
#
# For each binary (this tree's release build, then OLD_BIN's if given) and each site of SITES
# (default "a b"; a leads, b follows): both sites start with a 1 GiB RAM volume, mirrored on
# loopback, both on core 0, the counted one under `valgrind --tool=callgrind --instr-atstart=no`
# and the other native; fio's nbd engine (core 1) writes 2,000 random 4 KiB writes at that depth to site
# a (warm-up), then `callgrind_control -i on`, N more (default 20,000), `-i off`, dump. Printed:
# instructions per write (the counted process's Ir / N) and its TOP (default 12) functions by
# their own instructions per write. The binaries must take `serve --config` with [mirror]
# site/peer_site/listen/peer (and witness_key_file where the binary requires it: asked with
# check-config, as mirror_compare.sh does).
#
# Environment: N, IODEPTH, SITES, TOP, OLD_BIN, BASE_PORT (default 13600), KEEP=1 keeps the work
# directory (callgrind files included). Needs: valgrind, fio (nbd engine), nbdinfo (libnbd-bin),
# python3. Listens on 127.0.0.1 only; always cleans up.

set -euo pipefail
N=${N:-20000}
IODEPTH=${IODEPTH:-1}
SITES=${SITES:-a b}
TOP=${TOP:-12}
OLD_BIN=${OLD_BIN:-}
BASE_PORT=${BASE_PORT:-13600}
KEEP=${KEEP:-0}
[[ $N =~ ^[0-9]+$ && $N -ge 1000 && $IODEPTH =~ ^[0-9]+$ && $IODEPTH -ge 1 && $TOP =~ ^[0-9]+$ && $BASE_PORT =~ ^[0-9]+$ ]] ||
    { echo "mirror_instructions: N (>= 1000), IODEPTH (>= 1), TOP and BASE_PORT must be numbers" >&2; exit 1; }
for s in $SITES; do
    [[ $s == a || $s == b ]] || { echo "mirror_instructions: SITES holds a and/or b" >&2; exit 1; }
done
for tool in valgrind callgrind_control callgrind_annotate fio nbdinfo python3; do
    command -v "$tool" >/dev/null || { echo "mirror_instructions: needs $tool" >&2; exit 1; }
done
if [[ -n $OLD_BIN ]]; then
    [[ -x $OLD_BIN ]] || { echo "mirror_instructions: OLD_BIN=$OLD_BIN is not executable" >&2; exit 1; }
fi
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin twinblk
NEW_BIN=$PWD/target/release/twinblk
WORK=$(mktemp -d /tmp/mirror_instructions.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ $KEEP == 1 ]] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/link.key")

SCRIPT=mirror_instructions
# shellcheck source=benches/ram_pair.sh
source benches/ram_pair.sh # (the working directory is the repository root here)

port=$BASE_PORT
run() { # label bin site
    local label=$1 bin=$2 site=$3 key pa pb ra rb a b counted out
    key=$(key_line "$bin")
    pa=$port pb=$((port + 1)) ra=$((port + 2)) rb=$((port + 3))
    port=$((port + 4))
    site_cfg a b "$pa" "$ra" "$rb" "$key"
    site_cfg b a "$pb" "$rb" "$ra" "$key"
    out=$WORK/callgrind.$label.$site
    for s in a b; do
        if [[ $s == "$site" ]]; then
            valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
                "$bin" serve --config "$WORK/$s.toml" >"$WORK/$label.$s.log" 2>&1 &
            counted=$!
        else
            "$bin" serve --config "$WORK/$s.toml" >"$WORK/$label.$s.log" 2>&1 &
        fi
        PIDS+=($!)
        if [[ $s == a ]]; then a=$!; else b=$!; fi
    done
    local t0=$SECONDS ok=0
    echo "mirror_instructions: $label, site $site counted: starting both sites" >&2
    for _ in $(seq 600); do
        if nbdinfo "nbd://127.0.0.1:$pa/vol0" >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    [[ $ok == 1 ]] || { echo "mirror_instructions: site a did not serve: $(tail -3 "$WORK/$label.a.log")" >&2; exit 1; }
    local fio_args=(--ioengine=nbd "--uri=nbd://127.0.0.1:$pa/vol0" --rw=randwrite --bs=4k
        "--iodepth=$IODEPTH" --size=256M --output-format=json)
    echo "mirror_instructions: site a serves after $((SECONDS - t0)) s; warm-up (2,000 writes)" >&2
    # (The session may still be starting: the warm-up retries until its writes succeed.)
    for _ in $(seq 50); do
        taskset -c 1 fio --name=warm "${fio_args[@]}" --number_ios=2000 >/dev/null 2>&1 && break
        sleep 0.5
    done
    echo "mirror_instructions: counting $N writes (after $((SECONDS - t0)) s)" >&2
    callgrind_control -i on "$counted" >/dev/null 2>&1
    taskset -c 1 fio --name=count "${fio_args[@]}" --number_ios="$N" >"$WORK/$label.$site.json"
    echo "mirror_instructions: counted (after $((SECONDS - t0)) s)" >&2
    callgrind_control -i off "$counted" >/dev/null 2>&1
    callgrind_control -d "$counted" >/dev/null 2>&1
    sleep 1
    # (Killed, not stopped: the counts are dumped, and a clean stop of a site under valgrind
    # takes minutes.)
    kill -9 "$a" "$b" 2>/dev/null || true
    wait "$a" "$b" 2>/dev/null || true
    PIDS=()
    echo "mirror_instructions: sites stopped (after $((SECONDS - t0)) s)" >&2
    python3 - "$WORK/$label.$site.json" "$N" "$TOP" "$label" "$site" $(ls "$out"* | sort) <<'PY'
import json, re, subprocess, sys
fio_json, n, top, label, site, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6:]
t = open(fio_json).read()
done = json.loads(t[t.index("{"):])["jobs"][0]["write"]["total_ios"]
if done != n:
    sys.exit(f"mirror_instructions: fio completed {done} writes, not {n}")
total, funcs = 0, {}
for f in files:
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", f],
                         capture_output=True, text=True).stdout
    m = re.search(r"^([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", out, re.M)
    if m:
        total += int(m.group(1).replace(",", ""))
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+\S+?:(.*?)( \[.*\])?$", line)
        if m and "PROGRAM TOTALS" not in line:
            funcs[m.group(2)] = funcs.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
role = "leader" if site == "a" else "follower"
print(f"{label}, site {site} ({role}): {total / n:,.0f} instructions per write ({n} writes)")
for name, ir in sorted(funcs.items(), key=lambda kv: -kv[1])[:top]:
    print(f"  {ir / n:8,.0f}  {name[:110]}")
PY
}

echo "mirror_instructions: N=$N IODEPTH=$IODEPTH SITES=\"$SITES\", $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(valgrind --version)"
echo "- this tree: $NEW_BIN ($(git rev-parse --short HEAD))"
[[ -n $OLD_BIN ]] && echo "- old: $OLD_BIN"
for site in $SITES; do
    run new "$NEW_BIN" "$site"
    [[ -n $OLD_BIN ]] && run old "$OLD_BIN" "$site"
done
