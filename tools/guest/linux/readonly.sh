# Scenario `readonly` (sourced by /init): a read-only volume (a CDP point-in-time view) as the
# kernel's own initiators attach it. NVMe/TCP (nvme_tcp, nvme-cli): the namespace's block
# device must be read-only to the kernel (Identify Namespace NSATTR bit 0, write protected),
# read the view's data (md5 of the first tb.mib MiB) and refuse an O_DIRECT write, which must
# leave the data as it was. A writable volume over NVMe/TCP is the control: not read-only, a
# pattern written reads back. iSCSI (iscsi_tcp, open-iscsi): the sd disk of the view must be
# read-only (MODE SENSE WP; sd logs "Write Protect is on"), read the same data and refuse a
# write. /init's kernel-log check then finds no I/O error: the writes never reached a target.
# With tb.ns2md5, the writable volume's subsystem is a run-time one and, while the kernel is
# connected to it, the host adds a namespace and removes it again (ns_change): the kernel must
# rescan on the Namespace Attribute Changed event, attach and detach a block device.
#
# Kernel command line: tb.host, tb.nvport (NVMe/TCP listener), tb.ronqn (the view's
# subsystem), tb.rwnqn (a writable volume's), tb.iport (iSCSI portal), tb.roiqn (the view's
# target), tb.md5 (md5 of the view's first tb.mib MiB, as the host computed it), tb.mib,
# tb.ns2md5 (md5 of the first tb.mib MiB of the volume the host adds as namespace 2).
H=${tb_host:-10.0.2.2}
MIB=${tb_mib:-1}
. /etc/twinblk/nvme-paths.sh

# md5_of DEV: md5 of its first MIB MiB, read with O_DIRECT
md5_of() {
    dd if="$1" bs=1M count="$MIB" iflag=direct 2> /tmp/dd.err | md5sum | cut -d' ' -f1
}
# is_ro NAME DEV: both the kernel's views of it (sysfs ro, BLKROGET) in RO_SYS and RO_IOCTL
is_ro() {
    RO_SYS=$(cat "/sys/block/$1/ro" 2>/dev/null)
    RO_IOCTL=$(blockdev --getro "/dev/$1" 2>&1)
}
# refused_write NAME DEV: an O_DIRECT write of one 4 KiB block must fail, the data unchanged
refused_write() {
    if dd if=/dev/zero of="/dev/$2" bs=4096 count=1 oflag=direct conv=fsync 2> /tmp/dd.err; then
        check "$1" FAIL "a 4 KiB O_DIRECT write to /dev/$2 succeeded"
        return
    fi
    err=$(tr '\n' ' ' < /tmp/dd.err)
    after=$(md5_of "/dev/$2")
    if [ "$after" = "$tb_md5" ]; then
        check "$1" PASS "write to /dev/$2 refused ($err); data unchanged (md5 $after)"
    else
        check "$1" FAIL "write to /dev/$2 refused ($err) but the data now has md5 $after, want $tb_md5"
    fi
}
# read_view NAME DEV: the first MIB MiB have the host's md5
read_view() {
    t=$(uptime_s)
    got=$(md5_of "/dev/$2")
    if [ "$got" = "$tb_md5" ]; then
        check "$1" PASS "$MIB MiB via /dev/$2 in ${t}s..$(uptime_s)s: md5 $got, the view's point"
    else
        check "$1" FAIL "read md5 '$got' via /dev/$2, want $tb_md5 $(tr '\n' ' ' < /tmp/dd.err)"
    fi
}
# nvme_attach NAME NQN: connect, the namespace's device into NS (empty on failure)
nvme_attach() {
    NS=
    t=$(uptime_s)
    if ! nvme connect -t tcp -a "$H" -s "$tb_nvport" -n "$2" > /tmp/nvme.out 2>&1; then
        check "$1" FAIL "$H:$tb_nvport $2: $(tr '\n' ' ' < /tmp/nvme.out)"
        return 1
    fi
    NS=$(wait_head) || {
        check "$1" FAIL "connected to $2 but no namespace block device within 15 s"
        return 1
    }
    check "$1" PASS "$2 -> /dev/$NS ($(cat /sys/block/$NS/size) sectors) in ${t}s..$(uptime_s)s"
}
nvme_detach() {
    if nvme disconnect -n "$2" > /tmp/nvme.out 2>&1 && [ -z "$(ls /sys/class/nvme 2>/dev/null)" ]; then
        check "$1" PASS "$(tr '\n' ' ' < /tmp/nvme.out)"
    else
        check "$1" FAIL "$(tr '\n' ' ' < /tmp/nvme.out); left: $(ls /sys/class/nvme 2>/dev/null | tr '\n' ' ')"
    fi
}

# ns_head NSID: the namespace head's block device of NSID (its sysfs nsid), if there is one
ns_head() {
    for d in /sys/block/nvme*n*; do
        n=$(basename "$d")
        case "$n" in nvme*c*) continue ;; esac
        [ "$(cat "$d/nsid" 2>/dev/null)" = "$1" ] && echo "$n" && return 0
    done
    return 1
}
# ctrl_ns: the controller's namespaces (its nvmeXcYnZ path devices) and the heads, one line
ctrl_ns() {
    echo "paths: $(ls -d /sys/class/nvme/nvme*/nvme*c*n* 2>/dev/null | xargs -n1 basename 2>/dev/null | tr '\n' ' ')heads: $(ls /sys/block | grep -E '^nvme[0-9]+n[0-9]+$' | tr '\n' ' ')"
}
# ns_change DEV MD5: with the host connected to the run-time subsystem tb.rwnqn (DEV its
# namespace 1, whose first MIB MiB have md5 MD5), the host adds namespace 2 (asked by the info
# line ns-add; its volume's first MIB MiB have md5 tb.ns2md5): within 10 s the kernel must show
# a block device with nsid 2 that reads that md5 and takes a pattern (O_DIRECT, read back; the
# host finds it in the volume's file). Then the host removes it (info ns-remove): within 10 s
# the device must be gone, and DEV must still read MD5 and take a new pattern.
ns_change() {
    t=$(uptime_s)
    t0=$t
    info ns-add "$tb_rwnqn nsid 2"
    N2=
    j=0
    while [ $j -lt 100 ]; do
        N2=$(ns_head 2) && [ -b "/dev/$N2" ] && break
        N2=
        sleep 0.1
        j=$((j + 1))
    done
    if [ -z "$N2" ]; then
        check nvme-ns-added FAIL "no block device with nsid 2 within 10 s of ns-add (${t}s..$(uptime_s)s); $(ctrl_ns); kernel: $(dmesg | grep -i nvme | tail -5 | tr '\n' '|')"
        return 1
    fi
    check nvme-ns-added PASS "/dev/$N2 (nsid 2, $(cat /sys/block/$N2/size) sectors) in ${t}s..$(uptime_s)s; $(ctrl_ns); kernel: $(dmesg | grep -i 'rescanning' | tail -1)"
    readback "/dev/$N2" "$tb_ns2md5" nvme-ns-read
    pattern "/dev/$N2" "/dev/$N2" nvme-ns-write
    t=$(uptime_s)
    info ns-remove "$tb_rwnqn nsid 2"
    j=0
    while [ $j -lt 100 ] && { [ -e "/sys/block/$N2" ] || ns_head 2 > /dev/null; }; do
        sleep 0.1
        j=$((j + 1))
    done
    if [ -e "/sys/block/$N2" ] || ns_head 2 > /dev/null; then
        check nvme-ns-removed FAIL "/dev/$N2 still there 10 s after ns-remove (${t}s..$(uptime_s)s); $(ctrl_ns)"
    else
        check nvme-ns-removed PASS "/dev/$N2 gone in ${t}s..$(uptime_s)s; $(ctrl_ns)"
    fi
    readback "/dev/$1" "$2" nvme-ns1-kept
    pattern "/dev/$1" "/dev/$1" nvme-ns1-write
    info ns-change-s "$(awk "BEGIN { print $(uptime_s) - $t0 }")"
}

# --- NVMe/TCP, the read-only view
if nvme_attach nvme-connect-ro "$tb_ronqn"; then
    is_ro "$NS"
    if [ "$RO_SYS" = 1 ] && [ "$RO_IOCTL" = 1 ]; then
        check nvme-ro PASS "/sys/block/$NS/ro $RO_SYS, blockdev --getro $RO_IOCTL"
    else
        check nvme-ro FAIL "/sys/block/$NS/ro '$RO_SYS', blockdev --getro '$RO_IOCTL' (want 1): nvme id-ns nsattr $(nvme id-ns "/dev/$NS" 2>&1 | grep -i nsattr | tr -s ' ')"
    fi
    read_view nvme-read "$NS"
    refused_write nvme-write-refused "$NS"
    nvme_detach nvme-disconnect-ro "$tb_ronqn"
fi

# --- NVMe/TCP, a writable volume (the control)
if nvme_attach nvme-connect-rw "$tb_rwnqn"; then
    is_ro "$NS"
    if [ "$RO_SYS" = 0 ] && [ "$RO_IOCTL" = 0 ]; then
        check nvme-rw-writable PASS "/sys/block/$NS/ro $RO_SYS, blockdev --getro $RO_IOCTL"
    else
        check nvme-rw-writable FAIL "/sys/block/$NS/ro '$RO_SYS', blockdev --getro '$RO_IOCTL' (want 0)"
    fi
    pattern "/dev/$NS" "/dev/$NS" nvme-rw-write
    [ -n "$tb_ns2md5" ] && ns_change "$NS" "$(cat /tmp/last.md5 2>/dev/null)"
    nvme_detach nvme-disconnect-rw "$tb_rwnqn"
fi

# --- iSCSI, the read-only view (node record by hand, as iscsi.sh does: the target lists its
# loopback portal)
. /etc/twinblk/iscsi-paths.sh
P="$H:$tb_iport"
iscsiadm -m node -o new -T "$tb_roiqn" -p "$P" > /tmp/node.out 2>&1
t=$(uptime_s)
if iscsiadm -m node -T "$tb_roiqn" -p "$P" --login > /tmp/login.out 2>&1; then
    D=
    j=0
    while [ -z "$D" ] && [ $j -lt 150 ]; do
        D=$(ls /sys/block | grep '^sd' | head -1)
        [ -n "$D" ] || sleep 0.1
        j=$((j + 1))
    done
    if [ -n "$D" ]; then
        check iscsi-login PASS "$P $tb_roiqn -> /dev/$D, $(cat /sys/block/$D/size) sectors, ${t}s..$(uptime_s)s"
        is_ro "$D"
        wp=$(dmesg | grep "\[$D\] Write Protect is")
        if [ "$RO_SYS" = 1 ] && [ "$RO_IOCTL" = 1 ] && echo "$wp" | grep -q "Write Protect is on"; then
            check iscsi-ro PASS "/sys/block/$D/ro $RO_SYS, blockdev --getro $RO_IOCTL; kernel: $wp"
        else
            check iscsi-ro FAIL "/sys/block/$D/ro '$RO_SYS', blockdev --getro '$RO_IOCTL' (want 1); kernel: '$wp'"
        fi
        read_view iscsi-read "$D"
        refused_write iscsi-write-refused "$D"
    else
        check iscsi-login FAIL "logged in to $P but no sd disk within 15 s"
    fi
else
    check iscsi-login FAIL "$(tr '\n' ' ' < /tmp/login.out) $(tr '\n' ' ' < /tmp/iscsid.log | tail -c 300)"
fi
if iscsiadm -m node -T "$tb_roiqn" -p "$P" --logout > /tmp/logout.out 2>&1 && [ -z "$(ls /sys/block | grep '^sd')" ]; then
    check iscsi-logout PASS "$(tr '\n' ' ' < /tmp/logout.out)"
else
    check iscsi-logout FAIL "$(tr '\n' ' ' < /tmp/logout.out); disks left: $(ls /sys/block | grep '^sd' | tr '\n' ' ')"
fi

# Nothing tried to write to a read-only device below the file layer.
rw=$(dmesg | grep -i 'write to read-only\|write protected')
if [ -z "$rw" ]; then
    check no-ro-write PASS "no write reached a read-only device"
else
    check no-ro-write FAIL "$(echo "$rw" | head -3 | tr '\n' '|')"
fi
echo "=== iscsid log"
cat /tmp/iscsid.log
