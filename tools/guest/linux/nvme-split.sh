# Scenario `nvme-split` (sourced by /init): a planned switchover, then a cut of the replication
# link between the two sites, under the kernel's NVMe/TCP initiator, both sites up. Two
# mirrored volumes in one subsystem: va (namespace 1) led by site a, vb (namespace 2) led by
# site b. The host list places this host at site b, so both namespaces' paths through site b
# are ANA optimized and site a's non-optimized, whichever site leads: Linux sends every I/O
# to site b. The guest writes a pattern to each namespace head, a MiB of va then a MiB of vb
# (O_DIRECT, each MiB flushed). At MiB tb.switchat a background loop rewrites that MiB of vb
# for 3 s while the guest asks the host to move vb's leadership to site a (info `switch-vb`,
# `mirror_switchover`): no write may fail and the paths stay as they were. At MiB tb.cutat
# background loops rewrite that MiB of both volumes while the guest asks the host to cut the
# link (info `cut-link`), until both volumes' paths through site b are no longer optimized
# and two more rewrites of each are done, so the cut lands among writes in flight at site b
# (each MiB is several commands). The witness grants each volume to its leader, now site a
# for both: site b fences them (its paths inaccessible, live paths that answer) and Linux must
# carry both volumes' writes over to site a, paths it was not using. No write may fail and
# both patterns must read back through the heads; both volumes' paths through site a are then
# optimized and through site b inaccessible. The guest then asks the host to restore the link
# (info `restore-link`): once site b has caught up from site a, both namespaces' paths through
# site b are optimized again and site a's non-optimized (90 s at most), and with site a's
# controller disconnected both patterns read back through site b alone. Last, site a's
# controller connected again, the host stops site b cleanly (info `stop-b`, SIGTERM: planned
# maintenance) while background loops rewrite a MiB of each volume through it: no write may
# fail and both patterns read back, through site a.
#
# Kernel command line: tb.host, tb.porta, tb.portb (the sites' NVMe/TCP listeners), tb.nqn,
# tb.mib (MiB written to each volume), tb.switchat and tb.cutat (the MiBs at which vb is
# switched over and the link is cut, below tb.mib).
# The background loops write two patterns in turns, so a rewrite lost or applied out of order
# shows in the read-backs (each compares with what the last acknowledged rewrites wrote).
# Infos: switch-vb, switch-stopping (the switchover's writes end), switch-window (how long vb
# was rewritten around the switchover), cut-link, restore-link, rewrites (of each volume during
# the cut), longest-mib-ms, stop-b, va-md5 and vb-md5 (what the replicas must hold in the end).
H=${tb_host:-10.0.2.2}
NQN=$tb_nqn
MIB=${tb_mib:-8}
SWITCHAT=${tb_switchat:-1}
CUTAT=${tb_cutat:-2}
. /etc/twinblk/nvme-paths.sh

# paths: the four ANA states, "va a/b vb a/b"
paths() { echo "va $(ana a 1)/$(ana b 1) vb $(ana a 2)/$(ana b 2)"; }
# wait_paths WANT TENTHS: until `paths` is WANT, TENTHS tenths of a second at most
wait_paths() {
    j=0
    while [ "$(paths)" != "$1" ] && [ $j -lt "$2" ]; do
        sleep 0.1
        j=$((j + 1))
    done
    [ "$(paths)" = "$1" ]
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

# bg_start NAME FILE DEV I: MiB I rewritten through DEV in the background until
# /tmp/stop-NAME exists, from FILE.alt and FILE in turns (so a rewrite lost or applied out of
# order shows in the read-backs; bg_stop leaves FILE holding what the last one wrote). Each
# failure is a line of /tmp/failed-NAME, each rewrite's milliseconds a line of
# /tmp/rewrites-NAME; its pid in BG_NAME.
bg_start() {
    rm -f "/tmp/stop-$1" "/tmp/failed-$1" "/tmp/last-$1"
    : > "/tmp/rewrites-$1"
    (
        k=0
        while [ ! -e "/tmp/stop-$1" ]; do
            if [ $((k % 2)) -eq 0 ]; then src="$2.alt"; else src="$2"; fi
            t=$(uptime_s)
            if dd if="$src" of="$3" bs=1M count=1 skip="$4" seek="$4" oflag=direct conv=fsync 2> "/tmp/bg-$1.err"; then
                echo "$src" > "/tmp/last-$1"
            else
                echo "$(tr '\n' ' ' < "/tmp/bg-$1.err")" >> "/tmp/failed-$1"
            fi
            echo "$(ms_since "$t")" >> "/tmp/rewrites-$1"
            k=$((k + 1))
        done
    ) &
    eval "BG_$1=$! BGF_$1=$2 BGI_$1=$4"
}
# rewrites NAME: how many rewrites NAME's loop has done
rewrites() { wc -l < "/tmp/rewrites-$1"; }
# bg_stop NAME WHAT: stop NAME's loop; its rewrites in REWRITES, its longest in LONGEST, its
# failures added to FAILED (as WHAT); its FILE then holds at MiB I what the last rewrite wrote
bg_stop() {
    touch "/tmp/stop-$1"
    eval "wait \$BG_$1; f=\$BGF_$1; i_=\$BGI_$1"
    REWRITES=$(rewrites "$1")
    for ms in $(cat "/tmp/rewrites-$1"); do
        [ "$ms" -gt "$LONGEST" ] && LONGEST=$ms
    done
    [ -s "/tmp/failed-$1" ] && FAILED="$FAILED $2:$(tr '\n' ' ' < "/tmp/failed-$1")"
    if [ "$(cat "/tmp/last-$1" 2> /dev/null)" = "$f.alt" ]; then
        dd if="$f.alt" of="$f" bs=1M count=1 skip="$i_" seek="$i_" conv=notrunc 2> /dev/null
    fi
}
# md5s: the md5s the heads must read now, in WA and WB
md5s() {
    WA=$(md5sum < /tmp/pa | cut -d' ' -f1)
    WB=$(md5sum < /tmp/pb | cut -d' ' -f1)
}
# b_optimized: a path through site b is still optimized
b_optimized() { [ "$(ana b 1)" = optimized ] || [ "$(ana b 2)" = optimized ]; }

MIRRORING="va non-optimized/optimized vb non-optimized/optimized"
SPLIT="va optimized/inaccessible vb optimized/inaccessible"
if connect a "$tb_porta" && connect b "$tb_portb"; then
    HA=$(wait_head 1)
    HB=$(wait_head 2)
    ctrls=$(ls /sys/class/nvme-subsystem/*/ 2>/dev/null | grep -cE '^nvme[0-9]+$')
    if [ -n "$HA" ] && [ -n "$HB" ] && [ "$ctrls" = 2 ] && wait_paths "$MIRRORING" 100; then
        check multipath PASS "heads /dev/$HA (va) and /dev/$HB (vb), 2 controllers; $(paths)"
    else
        check multipath FAIL "heads '$HA' '$HB', $ctrls controller(s), paths '$(paths)' (want '$MIRRORING'): $(nvme list-subsys 2>&1 | tr '\n' ' ')"
    fi
    if [ -n "$HA" ] && [ -n "$HB" ]; then
        for f in /tmp/pa /tmp/pb /tmp/pa.alt /tmp/pb.alt; do
            dd if=/dev/urandom of=$f bs=1M count="$MIB" 2> /dev/null
        done
        FAILED=
        LONGEST=0
        SEEN=
        CUT_REWRITES=0
        i=0
        t0=$(uptime_s)
        while [ $i -lt "$MIB" ]; do
            put /tmp/pa "/dev/$HA" $i
            put /tmp/pb "/dev/$HB" $i
            if [ $i -eq "$SWITCHAT" ]; then
                # vb's leadership moves to site a while its writes go on through site b.
                bg_start sw /tmp/pb "/dev/$HB" $i
                sleep 0.2
                t=$(uptime_s)
                info switch-vb "at MiB $i, $t s"
                sleep 3
                info switch-stopping "$(uptime_s) s"
                bg_stop sw "vb@$i (background, switchover)"
                info switch-window "$(ms_since "$t") ms, $REWRITES rewrites"
                if [ "$(paths)" = "$MIRRORING" ]; then
                    check paths-switched PASS "$(paths) after vb's switchover"
                else
                    check paths-switched FAIL "'$(paths)' after vb's switchover, want '$MIRRORING'"
                fi
            fi
            if [ $i -eq "$CUTAT" ]; then
                # The link cut while both volumes' writes are in flight at site b.
                bg_start ca /tmp/pa "/dev/$HA" $i
                bg_start cb /tmp/pb "/dev/$HB" $i
                sleep 0.2
                info cut-link "at MiB $i, $(uptime_s) s"
                j=0
                while b_optimized && [ $j -lt 200 ]; do
                    sleep 0.1
                    j=$((j + 1))
                done
                b_optimized || SEEN="no path through b optimized after $((j * 100)) ms"
                na=$(rewrites ca)
                nb=$(rewrites cb)
                j=0
                while { [ "$(rewrites ca)" -lt $((na + 2)) ] || [ "$(rewrites cb)" -lt $((nb + 2)) ]; } && [ $j -lt 300 ]; do
                    sleep 0.1
                    j=$((j + 1))
                done
                bg_stop ca "va@$i (background, cut)"
                ra=$REWRITES
                bg_stop cb "vb@$i (background, cut)"
                CUT_REWRITES="$ra+$REWRITES"
            fi
            i=$((i + 1))
        done
        info rewrites "$CUT_REWRITES"
        info longest-mib-ms "$LONGEST"
        md5s
        ga=$(dd if="/dev/$HA" bs=1M count="$MIB" iflag=direct 2> /tmp/dd.err | md5sum | cut -d' ' -f1)
        gb=$(dd if="/dev/$HB" bs=1M count="$MIB" iflag=direct 2>> /tmp/dd.err | md5sum | cut -d' ' -f1)
        if [ -z "$SEEN" ]; then
            check write-through-cut FAIL "a path through b stayed optimized 20 s after the cut ($(paths); $CUT_REWRITES rewrites of MiB $CUTAT)"
        elif [ -n "$FAILED" ]; then
            check write-through-cut FAIL "MiB writes failed:$FAILED"
        elif [ "$ga" != "$WA" ] || [ "$gb" != "$WB" ]; then
            check write-through-cut FAIL "read back va $ga (wrote $WA), vb $gb (wrote $WB) $(tr '\n' ' ' < /tmp/dd.err)"
        else
            check write-through-cut PASS "$MIB MiB to each volume in ${t0}s..$(uptime_s)s, vb switched over at MiB $SWITCHAT, the link cut at MiB $CUTAT among $CUT_REWRITES rewrites of it ($SEEN), no write failed, longest MiB ${LONGEST} ms; both read back as written"
        fi
        # Both volumes at site a, which leads them (20 s at most: ANA change notices, log reads).
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
            readback "/dev/$HA" "$WA" va-at-b
            readback "/dev/$HB" "$WB" vb-at-b
            # Site a back, then site b stopped cleanly (planned maintenance) among writes in
            # flight there: Linux must carry them over to site a.
            if connect a "$tb_porta" reconnect-a && wait_paths "$MIRRORING" 300; then
                FAILED=
                bg_start sa /tmp/pa "/dev/$HA" 0
                bg_start sb /tmp/pb "/dev/$HB" 0
                sleep 0.2
                info stop-b "$(uptime_s) s"
                j=0
                while [ "$(cat /sys/class/nvme/$CTRL_b/state 2> /dev/null)" = live ] && [ $j -lt 300 ]; do
                    sleep 0.1
                    j=$((j + 1))
                done
                st=$(cat /sys/class/nvme/$CTRL_b/state 2> /dev/null)
                na=$(rewrites sa)
                nb=$(rewrites sb)
                j=0
                while { [ "$(rewrites sa)" -lt $((na + 2)) ] || [ "$(rewrites sb)" -lt $((nb + 2)) ]; } && [ $j -lt 300 ]; do
                    sleep 0.1
                    j=$((j + 1))
                done
                bg_stop sa "va@0 (background, stop)"
                ra=$REWRITES
                bg_stop sb "vb@0 (background, stop)"
                if [ "$st" = live ]; then
                    check write-through-stop FAIL "site b's controller still live 30 s after its stop was asked"
                elif [ -n "$FAILED" ]; then
                    check write-through-stop FAIL "MiB writes failed:$FAILED"
                else
                    check write-through-stop PASS "site b stopped among $ra+$REWRITES rewrites (its controller $st), no write failed, $(paths)"
                fi
                md5s
                readback "/dev/$HA" "$WA" va-at-a
                readback "/dev/$HB" "$WB" vb-at-a
            else
                check write-through-stop FAIL "site a's controller did not come back with the mirroring paths: $(paths)"
            fi
        else
            check paths-mirroring FAIL "'$(paths)' after 90 s, want '$MIRRORING'"
        fi
        # What every replica must hold in the end.
        md5s
        info va-md5 "$WA"
        info vb-md5 "$WB"
    fi
fi
all_gone
