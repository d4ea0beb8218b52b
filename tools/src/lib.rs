//! twinblk operator tools. Binaries live in `src/bin/`: `twinblk-ctl` (control socket client),
//! `twinlink` (link emulator), `twinblk-nvme` (NVMe/TCP initiator: discovery, identify, load
//! generator) and `twinperf` (load generator over NBD, NVMe/TCP and iSCSI).
//!
//! - [`ctl`]: `twinblk-ctl`'s logic: control-socket calls, the two-site status, verbs.
//! - [`drill`]: `twinblk-ctl drill`: the DR drill (fault, RTO/RPO, resync, signed reports).
//! - [`nvmf`]: a userspace NVMe/TCP initiator (blocking sockets) and its load generator.
//! - [`perf`]: `twinperf`, the load generator that speaks NBD, NVMe/TCP and iSCSI itself
//!   (nonblocking event loop, verification, HDR latency histograms, JSON and SVG output).
//! - [`twinlink`]: the link emulator behind the `twinlink` binary (delay, jitter, bandwidth,
//!   loss, cuts between sites, changed at run time).

pub mod ctl;
pub mod drill;
pub mod nvmf;
pub mod perf;
pub mod twinlink;
