//! A reader of little-endian fields off the front of a byte slice, for the payloads peers send
//! (replicated reservation commands and states): every read checks the length and fails with
//! `None` instead of panicking, so a decoder built on it never panics on any input.

/// The bytes not read yet.
pub struct Cursor<'a>(pub &'a [u8]);

impl<'a> Cursor<'a> {
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    /// A little-endian u16.
    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    /// A little-endian u64.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A 16-byte identifier.
    pub fn id(&mut self) -> Option<[u8; 16]> {
        self.take(16)?.try_into().ok()
    }
    /// A UTF-8 string after its length in one byte.
    pub fn str8(&mut self) -> Option<String> {
        let n = self.u8()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// A UTF-8 string after its length as a little-endian u16.
    pub fn str16(&mut self) -> Option<String> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
    /// Everything was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_in_order_and_fails_short_instead_of_panicking() {
        let b = [1, 2, 0, 3, 0, 0, 0, 2, b'h', b'i', 9];
        let mut c = Cursor(&b);
        assert_eq!(c.u8(), Some(1));
        assert_eq!(c.u16(), Some(2));
        assert_eq!(c.u32(), Some(3));
        assert_eq!(c.str8().as_deref(), Some("hi"));
        assert!(!c.is_empty());
        assert_eq!(c.u16(), None, "one byte left");
        assert_eq!(c.u8(), Some(9));
        assert!(c.is_empty());
        assert_eq!(Cursor(&[5, b'a']).str8(), None, "shorter than its length");
        assert_eq!(Cursor(&[1, 0xFF]).str8(), None, "not UTF-8");
        assert_eq!(Cursor(&[2, 0, b'o', b'k']).str16().as_deref(), Some("ok"));
        assert_eq!(Cursor(&[0; 15]).id(), None);
    }
}
