//! Fuzz the activity log file's decoder (docs/mirror-protocol.md, "Activity log"): any bytes
//! either decode to a version whose fields are in range or are refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use twinblk::layer::mirror::alfile;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = alfile::decode(data) {
        assert!(s.generation >= 1 && s.extent.is_power_of_two() && s.extent >= 4096);
        let count = s.size.div_ceil(s.extent);
        assert!(s.extents.iter().all(|&e| e < count));
        assert_eq!(s.slot_bytes as usize * 2, data.len());
    }
});
