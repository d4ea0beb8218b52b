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
mkdir -p /etc/iscsi /var/lib/iscsi /run/lock/iscsi /var/lock/iscsi
echo "InitiatorName=iqn.2026-12.io.twinblk.test:linux-guest" > /etc/iscsi/initiatorname.iscsi
cat > /etc/iscsi/iscsid.conf <<CONF
node.startup = manual
node.session.timeo.replacement_timeout = 30
node.conn[0].timeo.login_timeout = 15
node.conn[0].timeo.logout_timeout = 15
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 15
CONF
# iscsid asks getpwuid() who is talking to it: root must exist.
echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd
echo "root:x:0:" > /etc/group
iscsid -f -c /etc/iscsi/iscsid.conf -i /etc/iscsi/initiatorname.iscsi > /tmp/iscsid.log 2>&1 &
# ready once it listens on its abstract socket (iscsiadm's requests go there)
i=0
while ! grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done

disks() { ls /sys/block | grep '^sd' | sort; }
# new_disk BEFORE: wait (15 s) for an sd disk not in BEFORE, print its name
new_disk() {
    j=0
    while [ $j -lt 150 ]; do
        for d in $(disks); do
            case " $1 " in *" $d "*) ;; *) echo "$d" && return 0 ;; esac
        done
        sleep 0.1
        j=$((j + 1))
    done
    return 1
}
# login SITE PORT: node record for H:PORT, login, the new disk into DISK_<SITE>
login() {
    before=" $(disks | tr '\n' ' ')"
    t=$(uptime_s)
    iscsiadm -m node -o new -T "$IQN" -p "$H:$2" > /tmp/node.out 2>&1
    if ! iscsiadm -m node -T "$IQN" -p "$H:$2" --login > /tmp/login.out 2>&1; then
        check "login-$1" FAIL "$(tr '\n' ' ' < /tmp/login.out) $(tr '\n' ' ' < /tmp/iscsid.log | tail -c 300)"
        return 1
    fi
    d=$(new_disk "$before") || {
        check "login-$1" FAIL "logged in to $H:$2 but no new sd disk within 15 s"
        return 1
    }
    eval "DISK_$1=$d"
    check "login-$1" PASS "$H:$2 -> /dev/$d, $(cat /sys/block/$d/size) sectors, ${t}s..$(uptime_s)s"
}
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

for p in "$tb_porta" "$tb_portb"; do
    if iscsiadm -m node -T "$IQN" -p "$H:$p" --logout > /tmp/logout.out 2>&1; then
        check "logout-$p" PASS "$(tr '\n' ' ' < /tmp/logout.out)"
    else
        check "logout-$p" FAIL "$(tr '\n' ' ' < /tmp/logout.out)"
    fi
done
left=$(disks | tr '\n' ' ')
if [ -z "$left" ]; then
    check disks-gone PASS "no sd disk after logout"
else
    check disks-gone FAIL "still there: $left"
fi
echo "=== iscsid log"
cat /tmp/iscsid.log
