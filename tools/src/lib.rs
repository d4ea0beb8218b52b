//! twinblk operator tools. Binaries live in `src/bin/`: `twinblk-ctl` (control socket client)
//! and `twinblk-nvme` (NVMe/TCP initiator: discovery, identify, load generator).
//!
//! - [`nvmf`]: a userspace NVMe/TCP initiator (blocking sockets) and its load generator.

pub mod nvmf;
