//! A base device that fails an update (EIO) under the CDP layer of a volume without the
//! mirror: the update fails to its host, the volume keeps what it held, and the history must
//! not serve the failed update's record as the volume's content: a point after it either is
//! refused or reads what the volume reads.

use crate::cdp::wait_window;
use crate::harness::{Server, pattern};
use crate::rawnbd::Client;
use std::path::Path;
use std::time::Duration;
use twinblk::layer::cdp::clock;
use twinblk::layer::cdp::pit::{self, Point};
use twinblk::layer::cdp::store::{self, CdpError, Load};

const SIZE: u64 = 4 << 20;
const BAD: u64 = 1 << 20;

fn at(dir: &Path, p: Point) -> Result<Vec<u8>, CdpError> {
    let h = store::load(dir, Load::ReadOnly)?;
    pit::read_at(&h, p, 0, SIZE)
}

#[test]
fn a_base_write_that_fails_is_not_served_as_the_volumes_content() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("j");
    let body = format!(
        "[reactor]\ncores=[0]\npin=false\n\
         [[volume]]\nname='v'\nbackend='uring'\nsize={SIZE}\nblock_size=4096\npath='{}'\n\
         fail_range=[{BAD}, 4096]\nfail_writes_only=true\n\
         [volume.cdp]\ndir='{}'\nsegment_size='4MiB'\n",
        tmp.path().join("v.img").display(),
        dir.display()
    );
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    let first = pattern(1, 8192);
    assert_eq!(c.write(0, &first), 0);
    std::thread::sleep(Duration::from_millis(5));
    let t_before = clock::now();
    // The idle journal's time mark carries the window past it.
    wait_window(&[&dir], t_before, "a time mark before the failure");
    // The device refuses the write: the host gets an error, the block keeps its zeroes.
    assert_ne!(c.write(BAD, &pattern(2, 4096)), 0, "the write fails");
    assert_eq!(c.read(BAD, 4096).unwrap(), vec![0u8; 4096]);
    let second = pattern(3, 8192);
    assert_eq!(c.write(8192, &second), 0);
    std::thread::sleep(Duration::from_millis(5));
    let t_after = clock::now();
    let volume = c.read(0, SIZE as u32).unwrap();
    let mut want = vec![0u8; SIZE as usize];
    want[..8192].copy_from_slice(&first);
    want[8192..16384].copy_from_slice(&second);
    assert!(
        volume == want,
        "the volume holds the acknowledged writes only"
    );
    let journal = s.rpc("cdp_status")[0]["journal"].clone();
    if journal == "running" {
        wait_window(&[&dir], t_after, "the window reaches the last write");
    }
    let mut before = vec![0u8; SIZE as usize];
    before[..8192].copy_from_slice(&first);
    assert!(
        at(&dir, Point::Time(t_before)).unwrap() == before,
        "the point before the failure"
    );
    match at(&dir, Point::Time(t_after)) {
        Ok(got) => assert!(
            got == volume,
            "the history serves the failed write's record as the volume's content (block at {BAD}: {:?}..)",
            &got[BAD as usize..BAD as usize + 8]
        ),
        Err(
            e @ (CdpError::NotWhole { .. } | CdpError::InGap { .. } | CdpError::Outside { .. }),
        ) => {
            assert_eq!(journal, "degraded", "{e}");
            eprintln!("after the failure: refused: {e}")
        }
        Err(e) => panic!("{e}"),
    }
    // A restart makes the history the volume again.
    c.disconnect();
    assert!(s.stop());
    let mut s = Server::start(tmp.path(), &body);
    let mut c = Client::connect(s.addr, "v", false);
    let third = pattern(4, 4096);
    assert_eq!(c.write(3 << 20, &third), 0);
    std::thread::sleep(Duration::from_millis(5));
    let t_end = clock::now();
    let volume = c.read(0, SIZE as u32).unwrap();
    wait_window(&[&dir], t_end, "the window after the restart");
    assert!(
        at(&dir, Point::Time(t_end)).unwrap() == volume,
        "the newest point after the restart"
    );
    c.disconnect();
    assert!(s.stop());
}
