//! Fuzz the replica state file's decoder (`layer/mirror/state.rs`, every version still read):
//! any bytes either decode or are refused, never a panic; what decodes has fields in range
//! and, saved again (as the newest version) and read back, is the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::layer::mirror::state;

fuzz_target!(|input: &[u8]| {
    // First byte 1: the rest with its right checksum appended (so the fields behind the
    // checksum are reached); anything else: the rest as it is.
    let Some((&fix, rest)) = input.split_first() else {
        return;
    };
    let mut data = rest.to_vec();
    if fix == 1 {
        let crc = twinblk::checksum::crc32c(&data);
        data.extend_from_slice(&crc.to_le_bytes());
    }
    let Ok(p) = state::decode(&data) else {
        return;
    };
    assert!(p.mode <= 4, "mode {}", p.mode);
    assert!(p.leads.is_some() || data[4] < 4);
    assert!(p.boot == 0 || data[4] >= 5);
    let dir = std::env::temp_dir().join(format!("twinblk-fuzz-state-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let path = dir.join("v.mirror-state");
    state::save(&path, &p).expect("save");
    let again = state::load(&path).expect("load").expect("a file");
    // A version-1 file's unknown suspect map is saved as an empty one; an unrecorded term as 0.
    let want = state::Persisted {
        suspect: Some(p.suspect.clone().unwrap_or_default()),
        leads: Some(p.leads.unwrap_or((0, false))),
        ..p
    };
    assert_eq!(again, want);
});
