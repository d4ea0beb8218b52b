# Scenario `nvme` (sourced by /init): the kernel's NVMe/TCP initiator (nvme_tcp, nvme-cli)
# connects to both sites of a mirrored volume; native NVMe multipath joins the two controllers
# into one namespace head with two paths (by default site a's ANA optimized, site b's
# non-optimized). A
# pattern written through the head (to site a) is read back through site b alone (site a's
# controller disconnected); a second pattern written there is read back through site a alone
# (site a reconnected, site b disconnected).
#
# Kernel command line: tb.host, tb.porta, tb.portb (the sites' NVMe/TCP listeners), tb.nqn,
# tb.mib; tb.anaa and tb.anab, the ANA states the paths must have (default optimized and
# non-optimized: the leader's rule; a host list placing this host at site b reverses them).
H=${tb_host:-10.0.2.2}
NQN=$tb_nqn
WANT_A=${tb_anaa:-optimized}
WANT_B=${tb_anab:-non-optimized}
. /etc/twinblk/nvme-paths.sh

if both_paths; then
    pattern "/dev/$HEAD" "/dev/$HEAD" write-head
    P1=$(cat /tmp/last.md5 2>/dev/null)
    disconnect a 1
    readback "/dev/$HEAD" "$P1" read-at-b
    pattern "/dev/$HEAD" "/dev/$HEAD" write-at-b
    P2=$(cat /tmp/last.md5 2>/dev/null)
    if connect a "$tb_porta" reconnect-a; then
        disconnect b 1
        readback "/dev/$HEAD" "$P2" read-at-a
        disconnect a 2
    fi
fi
all_gone
