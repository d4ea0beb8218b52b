//! The twinblk witness: a tiny arbitration process in a third place that decides which site
//! carries on when the two sites lose sight of each other.
//!
//! Model (the contract is `docs/witness-protocol.md`):
//! - Sites send HEARTBEATs; on losing its peer a site sends GRANT_REQUEST per volume group; the
//!   witness grants at most one site per group per epoch, persists the new epoch before
//!   answering, and the denied site fences itself. A preferred site per group wins ties. The
//!   holder RELEASEs once both sites are in sync again.
//! - UDP datagrams, HMAC-SHA256 (truncated to 16 bytes) with a shared key, per-site counters that
//!   strictly increase (replay protection), answers that echo the request's counter.
//! - Single-threaded, blocking std I/O; no async runtime, no io_uring; one small state file.
//!
//! Module map:
//! - [`proto`]: datagram encoding/decoding and the MAC (pure; never panics on input);
//! - [`state`]: the persisted table, its file format, and the grant rules ([`state::Arbiter`]);
//! - [`server`]: the witness loop ([`Witness`]);
//! - [`client`]: the blocking client the sites use ([`WitnessClient`]);
//! - [`operator`]: operator actions on a stopped witness's state file (releasing a survivor
//!   lost for good).
//!
//! The datapath depends on this crate (for `client` and `proto`), never the reverse.

pub mod client;
pub mod operator;
pub mod proto;
pub mod server;
pub mod state;

pub use client::{ClientError, GrantOutcome, ReleaseOutcome, WitnessClient};
pub use proto::{Claim, DenyReason, Epoch, GroupId, GroupView, Key, SiteId};
pub use server::{Config, Witness, WitnessError};
