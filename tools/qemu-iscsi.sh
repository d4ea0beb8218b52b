#!/bin/sh
# Make sure a qemu-img / qemu-io with QEMU's iSCSI driver is at hand for the iSCSI client tests
# (datapath/tests/it/iscsi.rs), without touching the host's QEMU packages.
#
# - If the host's qemu-img can load its `iscsi` driver, nothing is done (qemu-img lists the
#   driver even when the module is missing, so the check opens an iscsi:// URL on a closed
#   loopback port and looks for the missing-module message).
# - Otherwise (the host's qemu-utils comes from another release than the archive's
#   qemu-block-extra, so apt cannot install the module beside it), Debian's qemu-utils and
#   qemu-block-extra of one and the same version (the archive's candidate) are downloaded and
#   unpacked into target/qemu-iscsi/; the tests run qemu-img from there with QEMU_MODULE_DIR.
#
# Needs apt's package lists (apt-get update) and, for the download, the Debian mirror.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/target/qemu-iscsi"
# has_iscsi QEMU_IMG [MODULE_DIR]: the driver loads (the probe's connection is refused).
has_iscsi() {
  out=$(QEMU_MODULE_DIR=${2:-} "$1" info iscsi://127.0.0.1:9/iqn.2026-12.invalid:probe/0 2>&1 || true)
  case "$out" in
  *"Unable to load module"* | *"Unknown protocol"* | *"Unknown driver"*) return 1 ;;
  *iSCSI*) return 0 ;;
  *) return 1 ;;
  esac
}
if command -v qemu-img >/dev/null && has_iscsi qemu-img; then
  echo "qemu-iscsi: the host's qemu-img has the iSCSI driver"
  exit 0
fi
moddir="$dest/usr/lib/x86_64-linux-gnu/qemu"
if [ -x "$dest/usr/bin/qemu-img" ] && has_iscsi "$dest/usr/bin/qemu-img" "$moddir"; then
  echo "qemu-iscsi: $dest already holds qemu-img with the iSCSI driver"
  exit 0
fi
v=$(apt-cache policy qemu-block-extra | awk '/Candidate:/ {print $2}')
if [ -z "$v" ] || [ "$v" = "(none)" ]; then
  echo "qemu-iscsi: apt knows no qemu-block-extra (run apt-get update)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
(cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "qemu-utils=$v" "qemu-block-extra=$v")
rm -rf "$dest"
mkdir -p "$dest"
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$dest"; done
if ! has_iscsi "$dest/usr/bin/qemu-img" "$moddir"; then
  echo "qemu-iscsi: the unpacked qemu-img $v cannot load the iSCSI driver" >&2
  exit 1
fi
echo "qemu-iscsi: unpacked qemu-utils and qemu-block-extra $v into $dest"
