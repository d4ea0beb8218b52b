//! Mirror tests across parts: two engines over sparse RAM replicas, joined back to back
//! through the wire format (messages the peer must refuse; updates too long for one message).

use super::engine::{Engine, EngineConfig, Role};
use super::stats::MirrorStats;
use super::wire::{self, Decoded, Header, Type};
use crate::bdev::BlockDevice;
use crate::bdev::malloc::MallocDevice;
use crate::uring::IoCx;
use std::sync::Arc;
use std::time::Duration;

fn engine(io: &mut IoCx, role: Role, size: u64) -> (Engine, Arc<MallocDevice>) {
    let dev = MallocDevice::new(size, 512).expect("malloc");
    let inner = dev.open_channel(io).expect("channel");
    let cfg = EngineConfig {
        name: "t".into(),
        role,
        size,
        block: 512,
        peer_timeout: Duration::from_secs(60),
        max_backlog: 1 << 30,
        peer_dead: Duration::from_secs(60),
        heartbeat: Duration::from_secs(60),
        failover: None,
        dirty_granularity: 1 << 20,
        resync_rate: 1 << 30,
        state_file: None,
        meta: None,
    };
    let mut e = Engine::new(cfg, inner, 0, Arc::new(MirrorStats::default()));
    e.link_up(io);
    (e, dev)
}

#[test]
fn a_flush_with_an_offset_and_count_from_the_peer_is_refused() {
    let mut io = IoCx::new(8, 2, 4096, 4).expect("ring");
    for role in [Role::Leader, Role::Follower] {
        let (mut e, _dev) = engine(&mut io, role, 1 << 20);
        for (offset, count) in [(u64::MAX - 511, 4096), (0, 1 << 20), (512, 0)] {
            let h = Header {
                id: 1,
                offset,
                count,
                ..Header::new(Type::Flush)
            };
            assert!(
                e.on_msg(&mut io, &h, &[]).is_err(),
                "{role:?}: FLUSH offset {offset} count {count} taken"
            );
            let mut v = Vec::new();
            wire::encode(&mut v, &h, &[]);
            assert!(matches!(wire::decode(&v), Decoded::Bad(_)));
        }
        // A plain FLUSH still is.
        let h = Header {
            id: 1,
            ..Header::new(Type::Flush)
        };
        assert!(e.on_msg(&mut io, &h, &[]).is_ok());
    }
}
