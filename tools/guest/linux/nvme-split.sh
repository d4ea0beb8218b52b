# Scenario `nvme-split` (sourced by /init): the replication link between the two sites is cut
# under the kernel's NVMe/TCP initiator while both sites stay up. Two mirrored volumes in one
# subsystem: va (namespace 1) led by site a, vb (namespace 2) led by site b. The host list
# places this host at site b, so both namespaces' paths through site b are ANA optimized and
# site a's non-optimized: Linux sends every I/O to site b. The guest writes a pattern to each
# namespace head, a MiB of va then a MiB of vb (O_DIRECT, each MiB flushed). At MiB tb.cutat a
# background loop starts rewriting that MiB of va, the guest asks the host to cut the link
# (info `cut-link`), and the loop goes on until va's path through site b is no longer
# optimized and two more rewrites are done, so the cut lands among writes in flight at site
# b (each MiB is several commands). The witness grants each
# volume to its leader: site b fences va (its path inaccessible, a live path that answers) and
# Linux must carry va's writes over to site a, a path it was not using; vb stays at site b. No
# write may fail and both patterns must read back through the heads; then va's path through
# site a is optimized and through site b inaccessible, vb's the other way round. The guest
# then asks the host to restore the link (info `restore-link`): once site b has caught va up
# from site a, both namespaces' paths through site b are optimized again and site a's
# non-optimized (90 s at most), and with site a's controller disconnected both patterns read
# back through site b alone.
#
# Kernel command line: tb.host, tb.porta, tb.portb (the sites' NVMe/TCP listeners), tb.nqn,
# tb.mib (MiB written to each volume), tb.cutat (the MiB at which the link is cut).
# Infos: va-md5, vb-md5, cut-link, restore-link, rewrites, longest-mib-ms.
H=${tb_host:-10.0.2.2}
NQN=$tb_nqn
MIB=${tb_mib:-8}
CUTAT=${tb_cutat:-2}
. /etc/twinblk/nvme-paths.sh

# ana_ns SITE NSID: the ANA state of SITE's path to namespace NSID
ana_ns() {
    eval "c=\$CTRL_$1"
    for p in /sys/block/nvme*c*n"$2"; do
        [ -e "$p/device" ] || continue
        [ "$(basename "$(readlink -f "$p/device")")" = "$c" ] && cat "$p/ana_state" && return 0
    done
}
# paths: the four ANA states, "va a/b vb a/b"
paths() { echo "va $(ana_ns a 1)/$(ana_ns b 1) vb $(ana_ns a 2)/$(ana_ns b 2)"; }
# wait_paths WANT TENTHS: until `paths` is WANT, TENTHS tenths of a second at most
wait_paths() {
    j=0
    while [ "$(paths)" != "$1" ] && [ $j -lt "$2" ]; do
        sleep 0.1
        j=$((j + 1))
    done
    [ "$(paths)" = "$1" ]
}
# head_of NSID: the namespace head's block device (15 s at most)
head_of() {
    j=0
    while [ $j -lt 150 ]; do
        for d in /sys/block/nvme*n"$1"; do
            n=$(basename "$d")
            case "$n" in nvme*c*) continue ;; esac
            [ -e "$d" ] && echo "$n" && return 0
        done
        sleep 0.1
        j=$((j + 1))
    done
    return 1
}
ms_since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
# put FILE DEV I: MiB I of FILE written through DEV (flushed); a failure is added to FAILED
put() {
    t=$(uptime_s)
    if ! dd if="$1" of="$2" bs=1M count=1 skip="$3" seek="$3" oflag=direct conv=fsync 2> /tmp/dd.err; then
        FAILED="$FAILED $2@$3:$(tr '\n' ' ' < /tmp/dd.err)"
    fi
    ms=$(ms_since "$t")
    [ "$ms" -gt "$LONGEST" ] && LONGEST=$ms
}

MIRRORING="va non-optimized/optimized vb non-optimized/optimized"
SPLIT="va optimized/inaccessible vb inaccessible/optimized"
if connect a "$tb_porta" && connect b "$tb_portb"; then
    HA=$(head_of 1)
    HB=$(head_of 2)
    ctrls=$(ls /sys/class/nvme-subsystem/*/ 2>/dev/null | grep -cE '^nvme[0-9]+$')
    if [ -n "$HA" ] && [ -n "$HB" ] && [ "$ctrls" = 2 ] && wait_paths "$MIRRORING" 100; then
        check multipath PASS "heads /dev/$HA (va) and /dev/$HB (vb), 2 controllers; $(paths)"
    else
        check multipath FAIL "heads '$HA' '$HB', $ctrls controller(s), paths '$(paths)' (want '$MIRRORING'): $(nvme list-subsys 2>&1 | tr '\n' ' ')"
    fi
    if [ -n "$HA" ] && [ -n "$HB" ]; then
        dd if=/dev/urandom of=/tmp/pa bs=1M count="$MIB" 2> /dev/null
        dd if=/dev/urandom of=/tmp/pb bs=1M count="$MIB" 2> /dev/null
        wa=$(md5sum < /tmp/pa | cut -d' ' -f1)
        wb=$(md5sum < /tmp/pb | cut -d' ' -f1)
        info va-md5 "$wa"
        info vb-md5 "$wb"
        FAILED=
        LONGEST=0
        REWRITES=0
        SEEN=
        i=0
        t0=$(uptime_s)
        while [ $i -lt "$MIB" ]; do
            put /tmp/pa "/dev/$HA" $i
            if [ $i -eq "$CUTAT" ]; then
                # MiB CUTAT of va rewritten in the background (each failure to /tmp/failed,
                # each rewrite's milliseconds a line of /tmp/rewrites) while the link is cut.
                rm -f /tmp/stop /tmp/failed
                : > /tmp/rewrites
                (
                    while [ ! -e /tmp/stop ]; do
                        t=$(uptime_s)
                        dd if=/tmp/pa of="/dev/$HA" bs=1M count=1 skip="$i" seek="$i" oflag=direct conv=fsync 2> /tmp/bg.err ||
                            echo "$(tr '\n' ' ' < /tmp/bg.err)" >> /tmp/failed
                        echo "$(ms_since "$t")" >> /tmp/rewrites
                    done
                ) &
                BG=$!
                sleep 0.2
                info cut-link "at MiB $i, $(uptime_s) s"
                j=0
                while [ "$(ana_ns b 1)" = optimized ] && [ $j -lt 200 ]; do
                    sleep 0.1
                    j=$((j + 1))
                done
                [ "$(ana_ns b 1)" = optimized ] || SEEN="va's path through b $(ana_ns b 1) after $((j * 100)) ms"
                n=$(wc -l < /tmp/rewrites)
                j=0
                while [ "$(wc -l < /tmp/rewrites)" -lt $((n + 2)) ] && [ $j -lt 300 ]; do
                    sleep 0.1
                    j=$((j + 1))
                done
                touch /tmp/stop
                wait $BG
                REWRITES=$(wc -l < /tmp/rewrites)
                for ms in $(cat /tmp/rewrites); do
                    [ "$ms" -gt "$LONGEST" ] && LONGEST=$ms
                done
                [ -s /tmp/failed ] && FAILED="$FAILED va@$i (background):$(tr '\n' ' ' < /tmp/failed)"
            fi
            put /tmp/pb "/dev/$HB" $i
            i=$((i + 1))
        done
        info rewrites "$REWRITES"
        info longest-mib-ms "$LONGEST"
        ga=$(dd if="/dev/$HA" bs=1M count="$MIB" iflag=direct 2> /tmp/dd.err | md5sum | cut -d' ' -f1)
        gb=$(dd if="/dev/$HB" bs=1M count="$MIB" iflag=direct 2>> /tmp/dd.err | md5sum | cut -d' ' -f1)
        if [ -z "$SEEN" ]; then
            check write-through-cut FAIL "va's path through b stayed optimized 20 s after the cut ($REWRITES rewrites of MiB $CUTAT)"
        elif [ -n "$FAILED" ]; then
            check write-through-cut FAIL "MiB writes failed:$FAILED"
        elif [ "$ga" != "$wa" ] || [ "$gb" != "$wb" ]; then
            check write-through-cut FAIL "read back va $ga (wrote $wa), vb $gb (wrote $wb) $(tr '\n' ' ' < /tmp/dd.err)"
        else
            check write-through-cut PASS "$MIB MiB to each volume in ${t0}s..$(uptime_s)s, link cut at MiB $CUTAT among $REWRITES rewrites of it ($SEEN), no write failed, longest MiB ${LONGEST} ms; both read back as written"
        fi
        # Each volume at the site that leads it (20 s at most: ANA change notices, log reads).
        if wait_paths "$SPLIT" 200; then
            check paths-split PASS "$(paths)"
        else
            check paths-split FAIL "'$(paths)' after 20 s, want '$SPLIT'"
        fi
        info restore-link "$(uptime_s) s"
        t=$(uptime_s)
        if wait_paths "$MIRRORING" 900; then
            check paths-mirroring PASS "$(paths) in ${t}s..$(uptime_s)s"
            disconnect a 1
            readback "/dev/$HA" "$wa" va-at-b
            readback "/dev/$HB" "$wb" vb-at-b
        else
            check paths-mirroring FAIL "'$(paths)' after 90 s, want '$MIRRORING'"
        fi
    fi
fi
all_gone
