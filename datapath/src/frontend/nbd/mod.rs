//! The NBD front end (fixed newstyle negotiation; simple and structured replies).
//!
//! [`proto`] holds the wire format as pure functions; [`conn`] the per-connection state
//! machine that drives them from the reactor. docs/nbd.md describes what is supported.

pub mod conn;
pub mod proto;

pub use conn::NbdConn;
