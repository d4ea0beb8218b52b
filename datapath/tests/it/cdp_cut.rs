//! A history cut in the middle by a damaged record in a sealed segment, on a volume that keeps
//! its content across a restart (a file): the later segments are set aside, so their writes
//! are in the volume but not in the history. Every point the history serves afterwards must
//! be the content the volume had at that moment, or be refused.

use crate::harness::{Server, pattern};
use crate::rawnbd::Client;
use twinblk::layer::cdp::format::Op;
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, Load};

const SIZE: u64 = 4 << 20;

#[test]
fn after_a_cut_in_a_sealed_segment_the_newest_point_is_still_the_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let img = tmp.path().join("v.img");
    std::fs::File::create(&img).unwrap().set_len(SIZE).unwrap();
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n[[volume]]\nname='v'\nbackend='uring'\npath='{}'\n\
         size={SIZE}\nblock_size=4096\n[volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        img.display(),
        dir.display()
    );
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    // About 12 MiB of 256 KiB writes: several 4 MiB segments.
    for i in 0..48u64 {
        assert_eq!(
            c.write((i % 16) * (256 << 10), &pattern(i + 1, 256 << 10)),
            0
        );
    }
    c.disconnect();
    assert!(s.stop(), "clean stop");
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    assert!(h.segments.len() >= 3, "{} segments", h.segments.len());
    // Damage the payload of a write in the first sealed segment, its index removed (so the
    // start's recovery scans it and cuts there).
    let (segno, e) = h
        .entries()
        .find(|(_, e)| e.op == Op::Write)
        .map(|(s, e)| (s, *e))
        .unwrap();
    crate::cdp::damage_payload(&dir, segno, e, 10);
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    assert_eq!(c.write(0, &pattern(999, 4096)), 0);
    let volume = c.read(0, SIZE as u32).unwrap();
    c.disconnect();
    assert!(s.stop(), "clean stop");
    let h = store::load(&dir, Load::ReadOnly).unwrap();
    match pit::read_at(&h, Point::Seq(h.last_seq), 0, SIZE) {
        Ok(newest) => assert!(
            newest == volume,
            "the newest point after the cut is not the volume (first difference at byte {:?})",
            newest.iter().zip(&volume).position(|(a, b)| a != b)
        ),
        Err(e) => panic!("the newest point is refused: {e}"),
    }
}
