//! twinblk datapath integration tests (one binary, modules per concern, no global state).

mod cdp;
mod cdp_rollback;
mod clients;
mod failover;
mod guest;
mod harness;
mod iscsi;
mod iscsi_alua;
mod iscsi_reserve;
mod iscsi_reset;
mod iscsi_xcopy;
mod layering;
mod linkauth;
mod linux_guest;
mod malformed;
mod mirror;
mod netfault;
mod netns;
mod nvmf;
mod nvmf_ana;
mod nvmf_fused_resv;
mod rawnbd;
mod reactor_wait;
mod runtime;
mod shutdown;
mod switchover;
