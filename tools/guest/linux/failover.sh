# Scenario `failover` (sourced by /init): a site dies under the kernel's NVMe/TCP initiator.
# The guest connects to both sites of a mirrored volume that has a witness (native multipath:
# one namespace head, site a's path ANA optimized, site b's non-optimized) and writes a pattern
# through the head a MiB at a time (O_DIRECT, each MiB flushed). At MiB tb.killat it asks the
# host to SIGKILL site a (info `kill-a`) and keeps rewriting that MiB until site a's controller
# is no longer live, so the kill lands in the middle of writes; the rest is written through
# site b alone, which carries on once the witness grants it survivor. No write may fail; the
# whole pattern reads back through the head; site b's path becomes ANA optimized. Then the
# guest asks the host to start site a again with its state (info `restart-a`): Linux's
# controller reconnects by itself, site a's path becomes usable once site a has caught up
# from site b, and with site b's controller disconnected the pattern reads back whole through
# site a alone (written while it was dead: the resync brought it).
#
# Kernel command line: tb.host, tb.porta, tb.portb (the sites' NVMe/TCP listeners), tb.nqn,
# tb.mib (MiB written), tb.killat (the MiB at which site a is killed).
# Infos: pattern-md5, kill-a, longest-mib-ms (the longest MiB write: what the kill cost the
# guest), rewrites (of MiB tb.killat until site a's path was seen down), restart-a.
H=${tb_host:-10.0.2.2}
NQN=$tb_nqn
WANT_A=optimized
WANT_B=non-optimized
MIB=${tb_mib:-16}
KILLAT=${tb_killat:-4}
. /etc/twinblk/nvme-paths.sh

# ms_since T: milliseconds since uptime T
ms_since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

# put I: MiB I of the pattern written through the head (flushed); its time in LAST_MS, the
# longest so far in LONGEST; a failure is added to FAILED
put() {
    t=$(uptime_s)
    if ! dd if=/tmp/pattern of="/dev/$HEAD" bs=1M count=1 skip="$1" seek="$1" oflag=direct conv=fsync 2> /tmp/dd.err; then
        FAILED="$FAILED $1:$(tr '\n' ' ' < /tmp/dd.err)"
    fi
    LAST_MS=$(ms_since "$t")
    [ "$LAST_MS" -gt "$LONGEST" ] && LONGEST=$LAST_MS
}

if both_paths; then
    dd if=/dev/urandom of=/tmp/pattern bs=1M count="$MIB" 2> /dev/null
    want=$(md5sum < /tmp/pattern | cut -d' ' -f1)
    info pattern-md5 "$want"
    FAILED=
    LONGEST=0
    REWRITES=0
    DOWN=
    i=0
    t0=$(uptime_s)
    while [ $i -lt "$MIB" ]; do
        put $i
        if [ $i -eq "$KILLAT" ] && [ -z "$DOWN" ]; then
            [ $REWRITES -eq 0 ] && info kill-a "at MiB $i, $(uptime_s) s"
            # Rewrite this MiB until the host's kill shows (60 s at most).
            if [ "$(cat /sys/class/nvme/$CTRL_a/state 2> /dev/null)" = live ] && [ $REWRITES -lt 600 ]; then
                REWRITES=$((REWRITES + 1))
                continue
            fi
            DOWN="site a's controller $(cat /sys/class/nvme/$CTRL_a/state 2> /dev/null) after $REWRITES rewrite(s)"
        fi
        i=$((i + 1))
    done
    info rewrites "$REWRITES"
    info longest-mib-ms "$LONGEST"
    got=$(dd if="/dev/$HEAD" bs=1M count="$MIB" iflag=direct 2> /tmp/dd.err | md5sum | cut -d' ' -f1)
    if [ -z "$DOWN" ] || [ $REWRITES -ge 600 ]; then
        check write-through-kill FAIL "site a's path never went down (${DOWN:-state $(cat /sys/class/nvme/$CTRL_a/state 2> /dev/null)})"
    elif [ -n "$FAILED" ]; then
        check write-through-kill FAIL "MiB writes failed:$FAILED"
    elif [ "$got" != "$want" ]; then
        check write-through-kill FAIL "read back md5 $got, wrote $want $(tr '\n' ' ' < /tmp/dd.err)"
    else
        check write-through-kill PASS "$MIB MiB written in ${t0}s..$(uptime_s)s with site a killed at MiB $KILLAT ($DOWN), no write failed, longest MiB ${LONGEST} ms; read back md5 $got as written"
    fi
    # Site b, the survivor now, is the optimized path (20 s at most: ANA change notice, log read).
    j=0
    while [ "$(ana b)" != optimized ] && [ $j -lt 200 ]; do
        sleep 0.1
        j=$((j + 1))
    done
    sb=$(ana b)
    if [ "$sb" = optimized ]; then
        check b-optimized PASS "site b's path $sb after $((j * 100)) ms"
    else
        check b-optimized FAIL "site b's path '$sb' after 20 s"
    fi
    # Site a again, with its state: the controller reconnects (every 10 s) and site a's path
    # turns usable once it caught up (90 s at most).
    info restart-a "$(uptime_s) s"
    t=$(uptime_s)
    j=0
    while [ $j -lt 900 ]; do
        st=$(cat /sys/class/nvme/$CTRL_a/state 2> /dev/null)
        sa=$(ana a)
        [ "$st" = live ] && { [ "$sa" = optimized ] || [ "$sa" = non-optimized ]; } && break
        sleep 0.1
        j=$((j + 1))
    done
    if [ $j -lt 900 ]; then
        check a-back PASS "site a's controller $st, its path $sa, in ${t}s..$(uptime_s)s"
        disconnect b 1
        readback "/dev/$HEAD" "$want" read-at-a
    else
        check a-back FAIL "site a's controller '$st', its path '$sa' after 90 s"
    fi
fi
all_gone
