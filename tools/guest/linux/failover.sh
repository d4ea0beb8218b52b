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
# Infos: those of kill-write.sh (pattern-md5, kill-a, rewrites, longest-mib-ms), restart-a.
H=${tb_host:-10.0.2.2}
NQN=$tb_nqn
WANT_A=optimized
WANT_B=non-optimized
. /etc/twinblk/nvme-paths.sh

# a_down: site a's controller is no longer live (the host's kill showed)
a_down() { [ "$(cat /sys/class/nvme/$CTRL_a/state 2> /dev/null)" != live ]; }
. /etc/twinblk/kill-write.sh

if both_paths; then
    write_through_kill "/dev/$HEAD"
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
