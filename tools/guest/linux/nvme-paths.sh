# Shell functions for the scenarios that connect the kernel's NVMe/TCP initiator to both sites
# of a mirrored volume (sourced by nvme.sh and failover.sh after /init defined `check`,
# `info` and `uptime_s`; the caller sets H, NQN, WANT_A and WANT_B; readonly.sh takes
# wait_head). Sourcing it writes the
# guest's host identity: one on every path (multipath needs the same host NQN and id).
mkdir -p /etc/nvme
echo "nqn.2014-08.org.nvmexpress:uuid:5d1a6c1e-7a1b-4c55-9a57-2b1c0e1f7e11" > /etc/nvme/hostnqn
echo "5d1a6c1e-7a1b-4c55-9a57-2b1c0e1f7e11" > /etc/nvme/hostid

# connect SITE PORT [CHECK]: a controller to H:PORT (its name in CTRL_<SITE>), checked as
# CHECK (default connect-SITE)
connect() {
    what=${3:-connect-$1}
    t=$(uptime_s)
    if ! nvme connect -t tcp -a "$H" -s "$2" -n "$NQN" > /tmp/nvme.out 2>&1; then
        check "$what" FAIL "$H:$2: $(tr '\n' ' ' < /tmp/nvme.out)"
        return 1
    fi
    c=$(ctrl_of "$2")
    if [ -z "$c" ]; then
        check "$what" FAIL "connected to $H:$2 but no controller has that address"
        return 1
    fi
    eval "CTRL_$1=$c"
    check "$what" PASS "$H:$2 -> $c ($(cat /sys/class/nvme/$c/model | tr -s ' '), cntlid $(cat /sys/class/nvme/$c/cntlid)) in ${t}s..$(uptime_s)s: $(tr '\n' ' ' < /tmp/nvme.out)"
}
# ctrl_of PORT: the controller whose transport address names PORT
ctrl_of() {
    for c in /sys/class/nvme/nvme*; do
        [ -e "$c/address" ] || continue
        case "$(cat "$c/address")" in
        *"trsvcid=$1,"* | *"trsvcid=$1") basename "$c" && return 0 ;;
        esac
    done
    return 1
}
# disconnect SITE: its controller
disconnect() {
    eval "c=\$CTRL_$1"
    if nvme disconnect -d "$c" > /tmp/nvme.out 2>&1; then
        check "disconnect-$1-$2" PASS "$c: $(tr '\n' ' ' < /tmp/nvme.out)"
    else
        check "disconnect-$1-$2" FAIL "$c: $(tr '\n' ' ' < /tmp/nvme.out)"
    fi
}
# ana SITE [NSID]: the ANA state of its path to namespace NSID's head (default 1)
ana() {
    eval "c=\$CTRL_$1"
    for p in /sys/block/nvme*c*n"${2:-1}"; do
        [ -e "$p/device" ] || continue
        [ "$(basename "$(readlink -f "$p/device")")" = "$c" ] && cat "$p/ana_state" && return 0
    done
}
# wait_head [NSID]: the head's block device of namespace NSID (default 1; nvmeXnY: a path's
# nvmeXcYnZ has no /dev node), 15 s at most
wait_head() {
    j=0
    while [ $j -lt 150 ]; do
        for d in /sys/block/nvme*n"${1:-1}"; do
            n=$(basename "$d")
            case "$n" in nvme*c*) continue ;; esac
            [ -e "$d" ] && echo "$n" && return 0
        done
        sleep 0.1
        j=$((j + 1))
    done
    return 1
}


# both_paths: controllers to site a (tb.porta) and site b (tb.portb), the namespace head in
# HEAD, checked as `multipath`: one subsystem, two controllers, site a's path in ANA state
# WANT_A and site b's in WANT_B. True when both connected and the head is there.
both_paths() {
    connect a "$tb_porta" && connect b "$tb_portb" || return 1
    HEAD=$(wait_head)
    ctrls=$(ls /sys/class/nvme-subsystem/*/ 2>/dev/null | grep -cE '^nvme[0-9]+$')
    sa=$(ana a)
    sb=$(ana b)
    if [ -n "$HEAD" ] && [ "$ctrls" = 2 ] && [ "$sa" = "$WANT_A" ] && [ "$sb" = "$WANT_B" ]; then
        check multipath PASS "head /dev/$HEAD ($(cat /sys/block/$HEAD/size) sectors), 1 subsystem, 2 controllers; site a's path $sa, site b's $sb"
    else
        check multipath FAIL "head '$HEAD', $ctrls controller(s) in the subsystem, ANA a '$sa' b '$sb' (want '$WANT_A' '$WANT_B'): $(nvme list-subsys 2>&1 | tr '\n' ' ')"
    fi
    [ -n "$HEAD" ]
}

# all_gone: every controller disconnected, checked as `controllers-gone`
all_gone() {
    nvme disconnect-all > /dev/null 2>&1
    left=$(ls /sys/class/nvme 2>/dev/null | tr '\n' ' ')
    if [ -z "$left" ]; then
        check controllers-gone PASS "no NVMe controller left"
    else
        check controllers-gone FAIL "still there: $left"
    fi
}
