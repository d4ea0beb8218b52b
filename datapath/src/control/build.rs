//! Building a volume's device stack from its configuration (base, error injection), shared
//! by the daemon's start and the control socket's `volume_create` (the CDP and mirror layers
//! are added by the daemon at start only).

use crate::bdev::errinj::{ErrInjDevice, FaultRange, Faults};
use crate::bdev::file::FileDevice;
use crate::bdev::malloc::MallocDevice;
use crate::bdev::{BdevError, BlockDevice};
use crate::control::config::Backend;
use std::sync::Arc;

/// The block device stack of volume `v` (its base and error injection; the CDP and mirror
/// layers are added by `Daemon::start`). Also used for volumes created at run time.
pub fn build_device(
    v: &crate::control::config::VolumeConfig,
) -> Result<Arc<dyn BlockDevice>, BdevError> {
    let base: Arc<dyn BlockDevice> = match v.backend {
        Backend::Malloc => {
            crate::bdev::malloc::check_fits_memory(v.size.0)?;
            Arc::new(MallocDevice::new(v.size.0, v.block_size)?)
        }
        Backend::Uring => {
            let path = v
                .path
                .as_ref()
                .expect("validated: uring has a path")
                .to_string_lossy()
                .into_owned();
            if v.volatile_cache {
                Arc::new(crate::bdev::cached::CachedDevice::open(
                    &path,
                    v.size.0,
                    v.block_size,
                    v.create,
                )?)
            } else {
                Arc::new(FileDevice::open(&path, v.size.0, v.block_size, v.create)?)
            }
        }
        Backend::CdpView => {
            use crate::layer::cdp::{bookmark, pit::Point, view};
            let w = v.view.as_ref().expect("validated: cdp-view has a view");
            let open_err = |e: String| BdevError::Open {
                path: w.dir.display().to_string(),
                source: std::io::Error::other(e),
            };
            let point = match (w.seq, w.time, &w.bookmark) {
                (Some(s), _, _) => Point::Seq(s),
                (_, Some(t), _) => Point::Time(t),
                (_, _, Some(b)) => Point::Time(
                    *bookmark::load(&w.dir)
                        .map_err(open_err)?
                        .get(b)
                        .ok_or_else(|| open_err(format!("no bookmark named {b:?}")))?,
                ),
                _ => unreachable!("validated: one of seq, time, bookmark"),
            };
            let d = view::ViewDevice::open(&view::ViewSpec {
                dir: w.dir.clone(),
                point,
                sandbox: w.sandbox,
            })
            .map_err(|e| open_err(e.to_string()))?;
            let info = d.info();
            if info.size != v.size.0 || info.block_size != v.block_size {
                return Err(open_err(format!(
                    "the history is of a {} byte volume with {} byte blocks; the config says {} and {}",
                    info.size, info.block_size, v.size.0, v.block_size
                )));
            }
            Arc::new(d)
        }
    };
    let range = |r: Option<[u64; 2]>| {
        let [offset, len] = r.unwrap_or([0, 0]);
        FaultRange { offset, len }
    };
    let faults = Faults {
        fail: range(v.fail_range),
        fail_flush: v.fail_flush,
        fail_flush_after_ms: v.fail_flush_after_ms,
        reads_pass: v.fail_writes_only,
        updates_pass: v.fail_reads_only,
        stall: range(v.stall_range),
        slow: range(v.slow_range),
        slow_ms: v.slow_ms,
        slow_flush: v.slow_flush,
    };
    Ok(
        if v.fail_range.is_none()
            && !v.fail_flush
            && v.fail_flush_after_ms.is_none()
            && v.stall_range.is_none()
            && v.slow_range.is_none()
            && !v.slow_flush
        {
            base
        } else {
            Arc::new(ErrInjDevice::with(base, faults))
        },
    )
}
