//! Transports: how bytes reach the network. TCP today (front ends' listeners and the mirror's
//! replication links); RDMA and TLS fit here later, below the layers and front ends that use
//! them and above the runtime that drives their sockets.

pub mod cursor;
pub mod tcp;
