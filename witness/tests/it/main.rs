//! Integration tests of the witness: a real `Witness` on loopback UDP (in-process, or the real
//! binary for the memory test) and real `WitnessClient`s, so the wire protocol, the rules, the
//! state file and the client's retransmission are exercised together.

mod binary;
mod failover;
mod forgery;
mod harness;
mod race;
mod slow_link;
mod unused;
