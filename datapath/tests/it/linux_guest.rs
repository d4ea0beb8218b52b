//! The Linux kernel's own initiators against a two-site mirrored cluster, in a QEMU guest
//! (`guest` module: Debian's kernel, an initramfs built by the test; KVM where it works, TCG
//! otherwise). Skipped, with the reason printed, where the machine cannot run a guest (no apt
//! access, no QEMU obtainable, `TWINBLK_SKIP_GUEST=1`); once the guest boots every check must
//! pass.

use crate::guest::{self, Run};
use crate::iscsi::two_sites;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// MiB of each pattern the guest writes (`TWINBLK_GUEST_MIB` overrides; the volume is 64 MiB).
fn pattern_mib() -> u64 {
    std::env::var("TWINBLK_GUEST_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|m| (1..=64).contains(m))
        .unwrap_or(32)
}

fn timeout() -> Duration {
    Duration::from_secs(
        std::env::var("TWINBLK_GUEST_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(420),
    )
}

/// The md5 of the first `len` bytes of a replica file (`md5sum` reads them from a pipe).
fn md5_prefix(file: &Path, len: u64) -> String {
    let mut f = std::fs::File::open(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut data = vec![0u8; len as usize];
    f.read_exact(&mut data).unwrap();
    let mut child = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Fail unless the run ended by itself, every check passed and each of `required` passed.
#[track_caller]
fn assert_passed(run: &Run, required: &[&str]) {
    let failed: Vec<String> = run
        .lines
        .iter()
        .filter_map(|l| match l {
            guest::Line::Check {
                name,
                pass: false,
                evidence,
            } => Some(format!("{name}: {evidence}")),
            _ => None,
        })
        .collect();
    let missing: Vec<&&str> = required
        .iter()
        .filter(|r| run.check(r).is_none_or(|(pass, _)| !pass))
        .collect();
    let ended = run.lines.iter().any(|l| matches!(l, guest::Line::End(0)));
    assert!(
        !run.timed_out && ended && failed.is_empty() && missing.is_empty(),
        "the guest's checks did not all pass (timed out: {}, ended cleanly: {ended}):\nfailed: {failed:#?}\nmissing or failed: {missing:?}\nconsole ({}), last lines:\n{}",
        run.timed_out,
        run.console.display(),
        run.console_tail(60)
    );
}

/// The kernel's iSCSI initiator (iscsi_tcp, open-iscsi) logs in to site a and to site b of a
/// mirrored volume (two sessions, two sd disks of one LU: the same wwid and size); the sites'
/// host list places the guest's initiator at site b, so the kernel's ALUA handler must show
/// site b's disk active/optimized and site a's (the leader's) active/non-optimized. It writes a
/// random pattern with O_DIRECT through site a's disk and reads it back identical through site
/// b's, then writes through b and reads through a, and logs out of both; the kernel log shows
/// no I/O error, abort, reset or connection error. The host then finds the last pattern in
/// both sites' replica files.
#[test]
fn linux_iscsi_initiator_writes_at_one_site_and_reads_at_the_other() {
    let kit = match guest::kit() {
        Ok(k) => k,
        Err(reason) => {
            guest::skip(
                "linux_iscsi_initiator_writes_at_one_site_and_reads_at_the_other",
                &reason,
            );
            return;
        }
    };
    let root = tempfile::tempdir().unwrap();
    // The initiator name tools/guest/linux/iscsi.sh gives the guest, at site b.
    let hosts = "[[host]]\nname='iqn.2026-12.io.twinblk.test:linux-guest'\nsite='b'\n";
    let (a, ia, b, ib) = two_sites(root.path(), hosts);
    let mib = pattern_mib();
    let run = guest::boot(
        kit,
        "iscsi-two-sites",
        "iscsi",
        &[
            ("host", "10.0.2.2".to_string()),
            ("porta", ia.port().to_string()),
            ("portb", ib.port().to_string()),
            ("iqn", "iqn.2026-11.io.twinblk:vol0".to_string()),
            ("mib", mib.to_string()),
            ("aluaa", "active/non-optimized".to_string()),
            ("aluab", "active/optimized".to_string()),
        ],
        timeout(),
    );
    let pa = format!("logout-{}", ia.port());
    let pb = format!("logout-{}", ib.port());
    assert_passed(
        &run,
        &[
            "modules",
            "network",
            "discovery",
            "login-a",
            "login-b",
            "same-lu",
            "alua",
            "sessions",
            "write-a-read-b",
            "write-b-read-a",
            &pa,
            &pb,
            "disks-gone",
            "kernel-log",
        ],
    );
    // The last pattern (written through site b) is in both replicas.
    let want = run
        .info("write-b-read-a-md5")
        .expect("the guest reported its pattern's md5");
    for site in ["a", "b"] {
        let got = md5_prefix(&root.path().join(format!("{site}.img")), mib << 20);
        assert_eq!(
            got, want,
            "site {site}'s replica holds the guest's last pattern"
        );
    }
    eprintln!(
        "linux iSCSI guest: {mib} MiB each way, guest {:.1} s",
        run.elapsed.as_secs_f64()
    );
    drop((a, b));
}

/// The kernel's NVMe/TCP initiator (nvme_tcp, nvme-cli) connects to site a and site b of a
/// mirrored volume whose sites' host list places the guest's host NQN at site b: native NVMe
/// multipath makes one namespace head with two paths, site b's ANA optimized and site a's
/// (the leader's) non-optimized, as each site reports to that host per controller ("Where
/// hosts are"). A pattern written through the head is read back
/// through site b alone (site a's controller disconnected), a second one written there is read
/// back through site a alone (a reconnected, b disconnected); no controller is left and the
/// kernel log is clean. Both replicas hold the last pattern.
#[test]
fn linux_nvme_multipath_across_both_sites_reads_what_either_site_wrote() {
    let kit = match guest::kit() {
        Ok(k) => k,
        Err(reason) => {
            guest::skip(
                "linux_nvme_multipath_across_both_sites_reads_what_either_site_wrote",
                &reason,
            );
            return;
        }
    };
    let root = tempfile::tempdir().unwrap();
    // The host NQN tools/guest/linux/nvme.sh gives the guest, at site b.
    let hosts = "[[host]]\nname='nqn.2014-08.org.nvmexpress:uuid:5d1a6c1e-7a1b-4c55-9a57-2b1c0e1f7e11'\nsite='b'\n";
    let (a, _, b, _) = two_sites(root.path(), hosts);
    let mib = pattern_mib();
    let run = guest::boot(
        kit,
        "nvme-two-sites",
        "nvme",
        &[
            ("host", "10.0.2.2".to_string()),
            ("porta", a.nvmf_addr.port().to_string()),
            ("portb", b.nvmf_addr.port().to_string()),
            ("nqn", "nqn.2026-11.io.twinblk:vol0".to_string()),
            ("mib", mib.to_string()),
            ("anaa", "non-optimized".to_string()),
            ("anab", "optimized".to_string()),
        ],
        timeout(),
    );
    assert_passed(
        &run,
        &[
            "modules",
            "network",
            "connect-a",
            "connect-b",
            "multipath",
            "write-head",
            "disconnect-a-1",
            "read-at-b",
            "write-at-b",
            "reconnect-a",
            "disconnect-b-1",
            "read-at-a",
            "disconnect-a-2",
            "controllers-gone",
            "kernel-log",
        ],
    );
    let want = run
        .info("write-at-b-md5")
        .expect("the guest reported its pattern's md5");
    for site in ["a", "b"] {
        let got = md5_prefix(&root.path().join(format!("{site}.img")), mib << 20);
        assert_eq!(
            got, want,
            "site {site}'s replica holds the guest's last pattern"
        );
    }
    eprintln!(
        "linux NVMe/TCP guest: {mib} MiB patterns, guest {:.1} s",
        run.elapsed.as_secs_f64()
    );
    drop((a, b));
}
