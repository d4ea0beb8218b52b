//! Hardware tests: each test looks for the hardware it needs and, when it is absent, prints
//! `SKIP <test>: <reason>` on stderr instead of passing silently.

use std::path::Path;

/// Why a hardware test cannot run here, or `None` when the hardware is present.
pub fn missing_rdma() -> Option<String> {
    let dir = Path::new("/sys/class/infiniband");
    let present = std::fs::read_dir(dir)
        .map(|mut it| it.next().is_some())
        .unwrap_or(false);
    if present {
        None
    } else {
        Some(format!("no RDMA device under {}", dir.display()))
    }
}

/// Why an NVMe test cannot run here, or `None` when an NVMe namespace is present.
pub fn missing_nvme() -> Option<String> {
    let found = std::fs::read_dir("/dev")
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("nvme"))
        })
        .unwrap_or(false);
    if found {
        None
    } else {
        Some("no /dev/nvme* device".to_string())
    }
}

/// Print the skip line every hardware test emits when it cannot run.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIP {test}: {reason}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rdma_mirror_transport() {
        if let Some(why) = missing_rdma() {
            skip(
                "rdma_mirror_transport",
                &format!("{why}; the RDMA mirror transport is not built yet"),
            );
            return;
        }
        skip(
            "rdma_mirror_transport",
            "RDMA hardware found, but the RDMA mirror transport is not built yet",
        );
    }

    #[test]
    fn nvme_uring_bdev_on_real_drive() {
        if let Some(why) = missing_nvme() {
            skip("nvme_uring_bdev_on_real_drive", &why);
            return;
        }
        skip(
            "nvme_uring_bdev_on_real_drive",
            "an NVMe drive is present but this test is not written yet",
        );
    }
}
