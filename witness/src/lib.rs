//! The twinblk witness: a tiny arbitration process in a third place that decides which site
//! carries on when the two sites lose sight of each other.
//!
//! Not built yet: this crate holds the place the design gives it (it owns its wire protocol
//! as `witness::proto`, and the datapath depends on it, never the reverse). The work is
//! tracked by the issue "Witness, failover in about a second, fencing, and online resync".

/// The wire protocol between sites and the witness (documented in docs/witness-protocol.md
/// once it exists).
pub mod proto {
    /// Protocol version a witness of this build speaks.
    pub const VERSION: u16 = 0;
}
