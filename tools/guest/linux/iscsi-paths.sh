# Shell functions for the scenarios where the kernel's iSCSI initiator (iscsi_tcp, open-iscsi's
# iscsid/iscsiadm) logs in to sites of a mirrored volume (sourced by iscsi.sh and
# iscsi-failover.sh after /init defined `check` and `uptime_s`; the caller sets H and IQN;
# readonly.sh takes only the initiator's set-up).
# Sourcing it writes the initiator's configuration and starts iscsid.
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
# logout_all PORT...: log out of each portal (checks logout-PORT), then no sd disk may be left
# (check disks-gone)
logout_all() {
    for p in "$@"; do
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
}
