#!/usr/bin/env bash
# Two-site NVMe/TCP multipath with the Linux kernel's own initiator (a QEMU guest) against
# `twinblk demo`: connect both sites, one head with two paths, round-robin fio verify, write
# with site a SIGKILLed mid-way (guest mark kill-now), read back, restart site a with the
# command the demo printed (mark restart-now), read back through both paths.
#
# It drives the team's guest tool (its common.sh and its `mpath` guest scenario), which is not
# part of this repository: set TB_GUEST to its directory (default ../shared/guest from the
# repository root). Usage:
#   TB_WORK=/var/tmp/tbguest TB_BIN=$PWD/target/release TB_GUEST=../shared/guest \
#       tools/guest/two-site-nvme.sh
# Exit status 0 only when every check passed.
TB_GUEST=${TB_GUEST:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../../shared/guest" 2>/dev/null && pwd)}
[ -f "$TB_GUEST/common.sh" ] || { echo "no guest tool at TB_GUEST=$TB_GUEST" >&2; exit 2; }
source "$TB_GUEST/common.sh"
need_guest
rc=0
start_demo
RESTART=$(sed -n 's/^A killed site starts again with: \(.*\) (site b: .*/\1/p' "$TB_WORK/logs/demo.log")
log "restart command: $RESTART"
boot_vm s2-mpath mpath "porta=$TB_DEMO_NVMF,portb=$((TB_DEMO_NVMF + 1)),mib=${TB_S2_MIB:-48},waitrestart=90" -netdev user,id=n0,restrict=off -device virtio-net-pci,netdev=n0,romfile=
if wait_mark kill-now; then
    sleep "${TB_KILL_DELAY:-0.3}"
    log "SIGKILL site a (pid $SITE_A_PID)"; kill -KILL "$SITE_A_PID"
fi
if wait_mark restart-now; then
    log "restarting site a: $RESTART"
    $RESTART > "$TB_WORK/logs/site-a-restart.log" 2>&1 &
    STARTED_PIDS+=("$!")
fi
wait_vm
summary "$VM_RES"
grep -q 'TB-RESULT .* FAIL' "$VM_RES" && rc=1
sed -n '/TB-DMESG-BEGIN/,/TB-DMESG-END/p' "$VM_RES" | grep -iE 'nvme|error' | head -40
echo "----- b: $(mstat b)"; echo "----- a: $(mstat a)"
stop_all
exit $rc
