# Scenario `iscsi-failover` (sourced by /init): a site dies under the kernel's iSCSI initiator.
# The guest logs in to site b only (the host list places it there: its path active/optimized)
# of a mirrored volume with a witness, and writes a pattern through that disk a MiB at a time
# while the host SIGKILLs site a, the leader, at MiB tb.killat (kill-write.sh: the guest sees
# site a gone when its portal refuses a TCP connection). Site b goes on once the witness
# grants it survivor; meanwhile what it answers must be something Linux retries (an ALUA
# transition), never an error that fails a write: no write may fail, the whole pattern reads
# back, and the kernel log shows no I/O error. Then the guest logs out.
#
# Kernel command line: tb.host, tb.porta and tb.portb (the sites' iSCSI portals; the guest
# only connects to site a's to see whether it is gone), tb.iqn, tb.mib, tb.killat.
H=${tb_host:-10.0.2.2}
IQN=$tb_iqn
. /etc/twinblk/iscsi-paths.sh

# a_down: site a's portal refuses a TCP connection (its process is gone); one it accepts is
# dropped after a second, and so is one still connecting (nc then ends killed by timeout,
# status 143, not 1)
a_down() {
    timeout 1 nc -w 5 "$H" "$tb_porta" < /dev/null > /dev/null 2>&1
    [ $? -eq 1 ]
}
. /etc/twinblk/kill-write.sh

if login b "$tb_portb"; then
    x=$(cat "/sys/block/$DISK_b/device/access_state" 2>/dev/null)
    if [ "$x" = active/optimized ]; then
        check alua PASS "/dev/$DISK_b (site b) $x"
    else
        check alua FAIL "/dev/$DISK_b (site b) '$x', want active/optimized"
    fi
    write_through_kill "/dev/$DISK_b"
    info access-state-after "$(cat "/sys/block/$DISK_b/device/access_state" 2>/dev/null)"
fi
logout_all "$tb_portb"
echo "=== iscsid log"
cat /tmp/iscsid.log
