//! CHAP authentication (RFC 7143 §12.1.3, RFC 1994), MD5 only (CHAP_A=5), one-way and
//! mutual, as a pure state machine the login drives (`docs/iscsi.md`).
//!
//! Model: in the security stage of a login to a target that has a CHAP secret, the target
//! answers `AuthMethod=CHAP`, then `CHAP_A=5` with `CHAP_I` (an identifier) and `CHAP_C` (a
//! 16-byte random challenge); the initiator answers `CHAP_N` (its user name) and `CHAP_R` =
//! MD5(I ‖ secret ‖ C). For mutual CHAP it also sends its own `CHAP_I` and `CHAP_C`, which the
//! target answers with its user name and response. CHAP_C and CHAP_R are RFC 7143 §6.1
//! binary-values, hex (`0x`/`0X`) or base64 (`0b`/`0B`), at most 1024 bytes (§12.1.3); CHAP_I
//! a numerical-value (decimal or `0x` hex) of one octet.
//!
//! Invariants: a login passes the security stage only after a response that matches; a wrong
//! name, response, algorithm or a repeated challenge fails it (0201); a CHAP_R, CHAP_C or
//! CHAP_I that is malformed or too long is the initiator's error (0200); the initiator's
//! challenge must differ from the target's (a reflected challenge is refused); nothing here
//! panics on any key value.

use super::login::{LoginStatus, put_key};
use md5::{Digest, Md5};

/// A target's CHAP credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chap {
    /// The user name the initiator must give (CHAP_N).
    pub user: String,
    /// The secret the initiator proves it knows.
    pub secret: Vec<u8>,
    /// Mutual CHAP: the target's own user name and secret.
    pub mutual: Option<(String, Vec<u8>)>,
}

/// Where a CHAP exchange is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Stage {
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    #[default]
    WaitAlgorithm,
    /// Challenge sent; waiting for CHAP_N and CHAP_R.
    WaitResponse {
        /// CHAP_I sent.
        id: u8,
        /// CHAP_C sent.
        challenge: Vec<u8>,
    },
    /// The initiator is authenticated.
    Done,
}

/// MD5(id ‖ secret ‖ challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

/// Hex with a `0x` prefix.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// The longest CHAP_C or CHAP_R, in bytes (RFC 7143 §12.1.3: their binary length, not the
/// length of their encoding, must not exceed 1024 bytes).
pub const MAX_BINARY: usize = 1024;

/// Parse a CHAP binary value (RFC 7143 §6.1 binary-value): `0x` or `0X` and one or more hex
/// digits (either case; an odd count has an implied leading zero: n digits are (n + 1) / 2
/// bytes), or `0b` or `0B` and base64 (RFC 4648 §4: the standard alphabet, padded to a
/// multiple of 4 characters, the bits the padding leaves unused zero). `None`: malformed, or
/// longer than [`MAX_BINARY`] bytes.
pub fn unhex(v: &str) -> Option<Vec<u8>> {
    let b = v.as_bytes();
    let (prefix, body) = (b.get(..2)?, &b[2..]);
    let out = match prefix {
        b"0x" | b"0X" => from_hex(body)?,
        b"0b" | b"0B" => from_base64(body)?,
        _ => return None,
    };
    (out.len() <= MAX_BINARY).then_some(out)
}

fn from_hex(h: &[u8]) -> Option<Vec<u8>> {
    if h.is_empty() || h.len() > 2 * MAX_BINARY {
        return None;
    }
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(h.len().div_ceil(2));
    // An odd count: the first digit alone is the first byte.
    let (first, rest) = h.split_at(h.len() % 2);
    if let Some(&c) = first.first() {
        out.push(digit(c)?);
    }
    for p in rest.chunks_exact(2) {
        out.push(digit(p[0])? << 4 | digit(p[1])?);
    }
    Some(out)
}

/// RFC 4648 §4 base64, padded, with the bits padding leaves over zero (canonical).
fn from_base64(t: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    if t.is_empty() || t.len() / 4 * 3 > MAX_BINARY + 2 {
        return None;
    }
    base64::engine::general_purpose::STANDARD.decode(t).ok()
}

/// A CHAP_I (RFC 7143 §6.1 numerical-value, RFC 1994: one octet).
fn identifier(v: &str) -> Option<u8> {
    u8::try_from(super::login::number(v, 0, 255)?).ok()
}

/// Random bytes for a challenge (from the kernel).
fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // SAFETY: `b` is a valid, writable buffer of `n` bytes for the call.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), n, 0) };
    if got != n as isize {
        // getrandom does not fail for small requests on Linux ≥ 3.17; never hand out a
        // predictable challenge if it somehow did.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, x) in b.iter_mut().enumerate() {
            *x = (crate::checksum::crc32c(&(t + i as u128).to_le_bytes()) >> 8) as u8;
        }
    }
    b
}

/// Is `k` a CHAP key?
pub fn is_chap_key(k: &str) -> bool {
    k.starts_with("CHAP_")
}

/// One step of the exchange with the CHAP keys of a request; answers go to `out`.
pub fn step(
    stage: &mut Stage,
    chap: &Chap,
    keys: &[(&str, &str)],
    out: &mut Vec<u8>,
) -> Result<(), LoginStatus> {
    let fail = LoginStatus::AUTH_FAILED;
    let malformed = LoginStatus::INITIATOR_ERROR;
    let get = |k: &str| keys.iter().find(|(a, _)| *a == k).map(|(_, v)| *v);
    match stage {
        Stage::WaitAlgorithm => {
            let Some(a) = get("CHAP_A") else {
                return if keys.is_empty() { Ok(()) } else { Err(fail) };
            };
            if !a.split(',').any(|x| x == "5") {
                put_key(out, "CHAP_A", "Reject");
                return Err(fail);
            }
            let id = random(1)[0];
            let challenge = random(16);
            put_key(out, "CHAP_A", "5");
            put_key(out, "CHAP_I", &id.to_string());
            put_key(out, "CHAP_C", &hex(&challenge));
            *stage = Stage::WaitResponse { id, challenge };
            Ok(())
        }
        Stage::WaitResponse { id, challenge } => {
            let (Some(n), Some(r)) = (get("CHAP_N"), get("CHAP_R")) else {
                return Err(fail);
            };
            // A value that is no binary-value (RFC 7143 §6.1), or longer than the limit, is
            // the initiator's error (0200); a well-formed one that does not match fails the
            // authentication (0201).
            let r = unhex(r).ok_or(malformed)?;
            if n != chap.user || r != response(*id, &chap.secret, challenge) {
                return Err(fail);
            }
            match (&chap.mutual, get("CHAP_I"), get("CHAP_C")) {
                (_, None, None) if chap.mutual.is_none() => {}
                (Some((user, secret)), Some(i), Some(c)) => {
                    let i = identifier(i).ok_or(malformed)?;
                    let c = unhex(c).ok_or(malformed)?;
                    if c == *challenge || c.len() < 8 {
                        return Err(fail);
                    }
                    put_key(out, "CHAP_N", user);
                    put_key(out, "CHAP_R", &hex(&response(i, secret, &c)));
                }
                // Mutual CHAP configured but not asked for, or asked for but not configured.
                _ => return Err(fail),
            }
            *stage = Stage::Done;
            Ok(())
        }
        Stage::Done => {
            if keys.is_empty() {
                Ok(())
            } else {
                Err(fail)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::iscsi::login::parse_keys;

    #[test]
    fn rfc1994_md5_and_a_full_mutual_exchange() {
        // MD5 of the empty string, as a sanity check of the digest wiring.
        let h: [u8; 16] = Md5::new().finalize().into();
        assert_eq!(hex(&h), "0xd41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(unhex("0x0aff"), Some(vec![0x0a, 0xff]));
        assert_eq!(unhex("ab"), None);
        let chap = Chap {
            user: "u".into(),
            secret: b"secretsecret".to_vec(),
            mutual: Some(("t".into(), b"targetsecret".to_vec())),
        };
        let mut st = Stage::default();
        let mut out = Vec::new();
        step(&mut st, &chap, &[("CHAP_A", "7,5")], &mut out).unwrap();
        let Stage::WaitResponse { id, challenge } = st.clone() else {
            panic!("no challenge")
        };
        let ans = parse_keys(&out).unwrap();
        assert!(ans.contains(&("CHAP_A", "5")));
        let r = hex(&response(id, b"secretsecret", &challenge));
        let mut out = Vec::new();
        let my_c = hex(&[7u8; 16]);
        step(
            &mut st,
            &chap,
            &[
                ("CHAP_N", "u"),
                ("CHAP_R", &r),
                ("CHAP_I", "9"),
                ("CHAP_C", &my_c),
            ],
            &mut out,
        )
        .unwrap();
        assert_eq!(st, Stage::Done);
        let ans = parse_keys(&out).unwrap();
        let want = hex(&response(9, b"targetsecret", &[7u8; 16]));
        assert!(ans.contains(&("CHAP_R", want.as_str())), "{ans:?}");
        // A wrong response fails.
        let mut st = Stage::WaitResponse {
            id: 1,
            challenge: vec![1; 16],
        };
        assert!(
            step(
                &mut st,
                &chap,
                &[("CHAP_N", "u"), ("CHAP_R", "0x00")],
                &mut out
            )
            .is_err()
        );
    }

    /// RFC 7143 §6.1 binary-values: hex (`0x`/`0X`, digits of either case, an odd count with
    /// an implied leading zero) and base64 (`0b`/`0B`, RFC 4648 §4), at most 1024 bytes.
    #[test]
    fn binary_values_in_hex_and_base64_and_their_limits() {
        assert_eq!(unhex("0XaBcD"), Some(vec![0xab, 0xcd]));
        assert_eq!(unhex("0x0af"), Some(vec![0x00, 0xaf]));
        assert_eq!(unhex("0xabc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(unhex("0x7"), Some(vec![0x07]));
        assert_eq!(unhex("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(unhex("0BAQI="), Some(vec![1, 2]));
        assert_eq!(unhex("0b/w=="), Some(vec![0xff]));
        assert_eq!(unhex("0b+/+/"), Some(vec![0xfb, 0xff, 0xbf]));
        // Malformed: no digits, a sign, a non-digit, a wrong prefix, base64 unpadded, padded
        // in the middle, over-padded, with a stray character, or with non-zero unused bits.
        for bad in [
            "0x", "0x+1", "0x-1", "0x1g", "0x 1", "x1", "00x1", "0X", "0b", "0bAQ", "0bA=I=",
            "0bA===", "0bAQ*=", "0bAR==", "0bAQJ=", "0c12", "0xé1",
        ] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
        // 1024 bytes is the limit, in either encoding and however the hex is split.
        let hex_of = |n: usize| format!("0x{}", "ab".repeat(n));
        assert_eq!(unhex(&hex_of(1024)).map(|v| v.len()), Some(1024));
        assert_eq!(unhex(&hex_of(1025)), None);
        assert_eq!(
            unhex(&format!("0x1{}", "00".repeat(1023))).map(|v| v.len()),
            Some(1024)
        );
        assert_eq!(unhex(&format!("0x1{}", "00".repeat(1024))), None);
        assert_eq!(
            unhex(&format!("0b{}", "AAAA".repeat(341))).map(|v| v.len()),
            Some(1023)
        );
        assert_eq!(
            unhex(&format!("0b{}AA==", "AAAA".repeat(341))).map(|v| v.len()),
            Some(1024)
        );
        assert_eq!(unhex(&format!("0b{}AAA=", "AAAA".repeat(341))), None);
        assert_eq!(unhex(&format!("0b{}", "AAAA".repeat(342))), None);
    }

    /// A malformed CHAP_R or CHAP_C (or CHAP_I) is the initiator's error (0200); a well-formed
    /// response that does not match fails the authentication (0201); base64 responses count.
    #[test]
    fn a_malformed_value_is_an_initiator_error_a_wrong_one_an_authentication_failure() {
        let chap = Chap {
            user: "u".into(),
            secret: b"secretsecret".to_vec(),
            mutual: Some(("t".into(), b"targetsecret".to_vec())),
        };
        let (id, challenge) = (3u8, vec![5u8; 16]);
        let waiting = || Stage::WaitResponse {
            id,
            challenge: challenge.clone(),
        };
        let good = response(id, b"secretsecret", &challenge);
        let b64 = |b: &[u8]| {
            use base64::Engine;
            format!("0b{}", base64::engine::general_purpose::STANDARD.encode(b))
        };
        let run = |keys: &[(&str, &str)]| {
            let mut st = waiting();
            let mut out = Vec::new();
            step(&mut st, &chap, keys, &mut out).map(|()| (st, out))
        };
        let mutual_c = b64(&[9u8; 20]);
        let (st, out) = run(&[
            ("CHAP_N", "u"),
            ("CHAP_R", &b64(&good)),
            ("CHAP_I", "0x2A"),
            ("CHAP_C", &mutual_c),
        ])
        .expect("a base64 response and challenge, a hex identifier");
        assert_eq!(st, Stage::Done);
        let want = hex(&response(42, b"targetsecret", &[9u8; 20]));
        assert!(
            parse_keys(&out)
                .unwrap()
                .contains(&("CHAP_R", want.as_str()))
        );
        let upper = format!("0X{}", hex(&good)[2..].to_uppercase());
        let ok = |r: &str, i: &str, c: &str| {
            run(&[("CHAP_N", "u"), ("CHAP_R", r), ("CHAP_I", i), ("CHAP_C", c)]).map(|_| ())
        };
        assert_eq!(ok(&upper, "7", "0x0102030405060708090"), Ok(()));
        let (ie, af) = (LoginStatus::INITIATOR_ERROR, LoginStatus::AUTH_FAILED);
        let long_c = format!("0x{}", "ab".repeat(1025));
        for (r, i, c, want) in [
            ("0xzz", "7", "0x0102030405060708", ie),
            ("0b", "7", "0x0102030405060708", ie),
            (upper.as_str(), "7", long_c.as_str(), ie),
            (upper.as_str(), "+7", "0x0102030405060708", ie),
            (upper.as_str(), "256", "0x0102030405060708", ie),
            (upper.as_str(), "7", "0b010", ie),
            ("0x00", "7", "0x0102030405060708", af),
            (&b64(&[0; 16]), "7", "0x0102030405060708", af),
        ] {
            assert_eq!(ok(r, i, c), Err(want), "{r} {i} {c}");
        }
    }
}
