# write_through_kill DEV (sourced by the failover scenarios after /init defined `check`,
# `info` and `uptime_s`; the caller defines `a_down`, true once site a is seen gone): a
# tb.mib MiB random pattern written through DEV a MiB at a time (O_DIRECT, each MiB flushed).
# At MiB tb.killat it asks the host to SIGKILL site a (info `kill-a`) and rewrites that MiB
# until `a_down` (600 rewrites at most), so the kill lands among writes; then the rest. No
# write may fail and the whole pattern must read back through DEV (check write-through-kill).
# Infos: pattern-md5, kill-a, rewrites, longest-mib-ms (the longest MiB write: what the kill
# cost the guest); the pattern's md5 is left in `want`.
MIB=${tb_mib:-16}
KILLAT=${tb_killat:-4}

# ms_since T: milliseconds since uptime T
ms_since() { awk -v a="$1" -v b="$(uptime_s)" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

# put DEV I: MiB I of the pattern written through DEV (flushed); the longest time so far in
# LONGEST; a failure is added to FAILED
put() {
    t=$(uptime_s)
    if ! dd if=/tmp/pattern of="$1" bs=1M count=1 skip="$2" seek="$2" oflag=direct conv=fsync 2> /tmp/dd.err; then
        FAILED="$FAILED $2:$(tr '\n' ' ' < /tmp/dd.err)"
    fi
    ms=$(ms_since "$t")
    [ "$ms" -gt "$LONGEST" ] && LONGEST=$ms
}

write_through_kill() {
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
        put "$1" $i
        if [ $i -eq "$KILLAT" ] && [ -z "$DOWN" ]; then
            [ $REWRITES -eq 0 ] && info kill-a "at MiB $i, $(uptime_s) s"
            if ! a_down && [ $REWRITES -lt 600 ]; then
                REWRITES=$((REWRITES + 1))
                continue
            fi
            a_down && DOWN="site a seen gone after $REWRITES rewrite(s)"
        fi
        i=$((i + 1))
    done
    info rewrites "$REWRITES"
    info longest-mib-ms "$LONGEST"
    got=$(dd if="$1" bs=1M count="$MIB" iflag=direct 2> /tmp/dd.err | md5sum | cut -d' ' -f1)
    if [ -z "$DOWN" ]; then
        check write-through-kill FAIL "site a was never seen gone ($REWRITES rewrites of MiB $KILLAT)"
    elif [ -n "$FAILED" ]; then
        check write-through-kill FAIL "MiB writes failed:$FAILED"
    elif [ "$got" != "$want" ]; then
        check write-through-kill FAIL "read back md5 $got, wrote $want $(tr '\n' ' ' < /tmp/dd.err)"
    else
        check write-through-kill PASS "$MIB MiB written through $1 in ${t0}s..$(uptime_s)s with site a killed at MiB $KILLAT ($DOWN), no write failed, longest MiB ${LONGEST} ms; read back md5 $got as written"
    fi
}
