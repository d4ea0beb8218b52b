# Scenario `iscsi` (sourced by /init): the kernel's iSCSI initiator (iscsi_tcp, open-iscsi's
# iscsid/iscsiadm) logs in to both sites of a mirrored volume, one session each, so the guest
# sees the volume twice (two sd disks of one logical unit), writes a random pattern through
# site a's disk and reads it through site b's, then the other way round, and logs out.
#
# Kernel command line: tb.host (the host as the guest sees it), tb.porta, tb.portb (the sites'
# iSCSI portals), tb.iqn (the target), tb.mib (pattern size), tb.aluaa and tb.aluab (the ALUA
# states the kernel's ALUA handler must show for each site's disk; default active/optimized at
# a, the leader, and active/non-optimized at b). The sites list their own loopback
# address in SendTargets, which the guest cannot reach behind QEMU's NAT, so the node records
# are made by hand for tb.host.
H=${tb_host:-10.0.2.2}
IQN=$tb_iqn
ALUA_A=${tb_aluaa:-active/optimized}
ALUA_B=${tb_aluab:-active/non-optimized}
. /etc/twinblk/iscsi-paths.sh

out=$(iscsiadm -m discovery -t sendtargets -p "$H:$tb_porta" 2>&1)
case "$out" in
*"$IQN"*) check discovery PASS "SendTargets at $H:$tb_porta: $(echo "$out" | tr '\n' ' ')" ;;
*) check discovery FAIL "$IQN not in SendTargets at $H:$tb_porta: $(echo "$out" | tr '\n' ' ')" ;;
esac

if login a "$tb_porta" && login b "$tb_portb"; then
    wa=$(cat "/sys/block/$DISK_a/device/wwid" 2>/dev/null)
    wb=$(cat "/sys/block/$DISK_b/device/wwid" 2>/dev/null)
    sa=$(cat "/sys/block/$DISK_a/size")
    sb=$(cat "/sys/block/$DISK_b/size")
    if [ -n "$wa" ] && [ "$wa" = "$wb" ] && [ "$sa" = "$sb" ]; then
        check same-lu PASS "/dev/$DISK_a and /dev/$DISK_b: wwid $wa, $sa sectors"
    else
        check same-lu FAIL "/dev/$DISK_a wwid '$wa' $sa sectors, /dev/$DISK_b wwid '$wb' $sb sectors"
    fi
    # The kernel's ALUA handler (scsi_dh_alua) read each path's state with REPORT TARGET PORT
    # GROUPS when the disk attached.
    xa=$(cat "/sys/block/$DISK_a/device/access_state" 2>/dev/null)
    xb=$(cat "/sys/block/$DISK_b/device/access_state" 2>/dev/null)
    ha=$(cat "/sys/block/$DISK_a/device/dh_state" 2>/dev/null)
    if [ "$xa" = "$ALUA_A" ] && [ "$xb" = "$ALUA_B" ]; then
        check alua PASS "handler '$ha'; /dev/$DISK_a (site a) $xa, /dev/$DISK_b (site b) $xb"
    else
        check alua FAIL "handler '$ha'; /dev/$DISK_a (site a) '$xa', /dev/$DISK_b (site b) '$xb'; want '$ALUA_A' '$ALUA_B'"
    fi
    n=$(iscsiadm -m session 2>/dev/null | grep -c "$IQN")
    if [ "$n" = 2 ]; then
        check sessions PASS "$(iscsiadm -m session | tr '\n' ' ')"
    else
        check sessions FAIL "$n sessions: $(iscsiadm -m session 2>&1 | tr '\n' ' ')"
    fi
    pattern "/dev/$DISK_a" "/dev/$DISK_b" write-a-read-b
    pattern "/dev/$DISK_b" "/dev/$DISK_a" write-b-read-a
fi

logout_all "$tb_porta" "$tb_portb"
echo "=== iscsid log"
cat /tmp/iscsid.log
