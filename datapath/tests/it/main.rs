//! twinblk datapath integration tests (one binary, modules per concern, no global state).

mod clients;
mod failover;
mod harness;
mod iscsi;
mod layering;
mod malformed;
mod mirror;
mod netfault;
mod nvmf;
mod nvmf_ana;
mod nvmf_fused_resv;
mod rawnbd;
mod shutdown;
