//! twinblk operator tools. Binaries live in `src/bin/`: `twinblk-ctl` (control socket client).
