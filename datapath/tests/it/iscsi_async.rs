//! Async Message (RFC 7143 §11.9): a target that is about to drop a session says so first
//! (AsyncEvent 3, "the target will drop all the connections of this session", with the
//! Time2Wait the initiator should wait before it logs in again), so an initiator reconnects
//! after a pause instead of treating the closed socket as a failure.

use crate::iscsi::{Raw, status_of};

/// A stopping daemon announces the drop, with a StatSN that follows the last one sent, then
/// closes the connection.
#[test]
fn a_stopping_daemon_announces_that_it_drops_the_session() {
    let (mut d, addr) = crate::iscsi::daemon("8M");
    let mut r = Raw::login_as(addr, "iqn.2026-12.test:async");
    assert_eq!(status_of(&mut r, 1, &[0; 6], 0).0, 0, "TEST UNIT READY");
    let nop = r.nop(2);
    let stat_sn = u32::from_be_bytes(nop[24..28].try_into().unwrap());
    let stopper = std::thread::spawn(move || {
        d.stop();
        d
    });
    let (h, data) = r
        .read_pdu()
        .expect("an Async Message before the connection closes");
    assert_eq!(h[0] & 0x3F, 0x32, "Async Message, got opcode {:#x}", h[0]);
    assert_eq!(h[1], 0x80, "F bit");
    assert_eq!(&h[16..20], &[0xFF; 4], "ITT reserved (0xffffffff)");
    assert_eq!(
        u32::from_be_bytes(h[24..28].try_into().unwrap()),
        stat_sn.wrapping_add(1),
        "StatSN follows the NOP-In's"
    );
    assert_eq!(
        h[36], 3,
        "AsyncEvent 3: all the session's connections dropped"
    );
    assert_eq!(
        u16::from_be_bytes([h[40], h[41]]),
        2,
        "Parameter2: Time2Wait"
    );
    assert_eq!(
        u16::from_be_bytes([h[42], h[43]]),
        0,
        "Parameter3: Time2Retain"
    );
    assert!(data.is_empty(), "no data segment");
    assert!(r.closed(), "then the connection closes");
    drop(stopper.join().unwrap());
}
