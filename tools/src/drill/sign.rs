//! Signed drill reports and the drill history (docs/drill.md, "Signature and history").
//!
//! Model: a report is a JSON object; its signature is HMAC-SHA256, keyed with the drill's
//! key file, over the report's canonical JSON without its `signature` member ([`canonical`]:
//! object members sorted by key, no whitespace, numbers as serde_json prints them). The
//! history is a file of JSON lines, one per drill: `{"entry": SUMMARY, "prev": HEX, "sig":
//! HEX}`, where `prev` is the previous line's `sig` (empty for the first line) and `sig` is
//! the HMAC of the canonical `{"entry", "prev"}`. Chaining each line to the one before makes
//! a line removed or reordered in the middle show as a broken link.
//!
//! Invariants: verification never panics on any file; a history verifies only when every
//! line parses, every signature matches and every `prev` is the `sig` of the line before.
//! Limit: removing the newest lines (truncation at the end) cannot be detected from the file
//! alone; compare the entry count with what the drills' outputs said.

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Sha256;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Shortest key accepted, bytes.
pub const MIN_KEY_BYTES: usize = 16;

/// Why signing or verifying could not be done.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key is unusable.
    #[error("{path}: the key has {len} bytes, at least {MIN_KEY_BYTES} are needed")]
    ShortKey {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// A report is not a signed JSON object.
    #[error("{0}")]
    Malformed(String),
}

/// An HMAC key read from a file (its bytes as they are).
pub struct Key(Vec<u8>);

impl Key {
    /// Read the key file.
    pub fn read(path: &Path) -> Result<Key, SignError> {
        let b = std::fs::read(path).map_err(|source| SignError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if b.len() < MIN_KEY_BYTES {
            return Err(SignError::ShortKey {
                path: path.to_path_buf(),
                len: b.len(),
            });
        }
        Ok(Key(b))
    }

    /// A key from bytes (tests).
    pub fn from_bytes(b: &[u8]) -> Option<Key> {
        (b.len() >= MIN_KEY_BYTES).then(|| Key(b.to_vec()))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length; the error case cannot happen.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }

    /// HMAC-SHA256 of `v`'s canonical JSON, hex.
    pub fn sign(&self, v: &Value) -> String {
        let mut m = self.mac();
        m.update(canonical(v).as_bytes());
        super::config::hex(&m.finalize().into_bytes())
    }

    /// `sig` is the HMAC of `v` (constant-time comparison).
    pub fn verify(&self, v: &Value, sig: &str) -> bool {
        let Some(bytes) = unhex(sig) else {
            return false;
        };
        let mut m = self.mac();
        m.update(canonical(v).as_bytes());
        m.verify_slice(&bytes).is_ok()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// `v` as canonical JSON: object members sorted by key (byte order), no whitespace.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                write_canonical(&m[k.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Sign `report` (an object): sets its `signature` member.
pub fn sign_report(key: &Key, report: &mut Value) -> Result<(), SignError> {
    let obj = report
        .as_object_mut()
        .ok_or_else(|| SignError::Malformed("a report is a JSON object".into()))?;
    obj.remove("signature");
    let sig = key.sign(&Value::Object(obj.clone()));
    obj.insert(
        "signature".into(),
        json!({"alg": "HMAC-SHA256", "value": sig}),
    );
    Ok(())
}

/// The report's signature is valid.
pub fn verify_report(key: &Key, report: &Value) -> Result<bool, SignError> {
    let mut obj = report
        .as_object()
        .cloned()
        .ok_or_else(|| SignError::Malformed("a report is a JSON object".into()))?;
    let sig = obj
        .remove("signature")
        .and_then(|s| s["value"].as_str().map(str::to_string))
        .ok_or_else(|| SignError::Malformed("the report has no signature".into()))?;
    Ok(key.verify(&Value::Object(obj), &sig))
}

/// The outcome of checking a history file.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryCheck {
    /// The file.
    pub path: PathBuf,
    /// Lines (entries) read.
    pub entries: usize,
    /// Every line verified and the chain is unbroken.
    pub ok: bool,
    /// One line per problem (`line N: ...`).
    pub problems: Vec<String>,
    /// The entries (the `entry` member of each line that parsed), oldest first.
    #[serde(skip)]
    pub parsed: Vec<Value>,
    /// The last line's signature (the next line's `prev`); empty when there is none.
    #[serde(skip)]
    pub last_sig: String,
}

/// Check every line of the history at `path` (a missing file is an empty history).
pub fn verify_history(key: &Key, path: &Path) -> Result<HistoryCheck, SignError> {
    let text = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(SignError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let text = String::from_utf8_lossy(&text);
    let mut c = HistoryCheck {
        path: path.to_path_buf(),
        entries: 0,
        ok: true,
        problems: Vec::new(),
        parsed: Vec::new(),
        last_sig: String::new(),
    };
    let mut prev = String::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            c.problems.push(format!("line {n}: empty"));
            continue;
        }
        c.entries += 1;
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                c.problems.push(format!("line {n}: not JSON ({e})"));
                prev = String::new();
                continue;
            }
        };
        let (Some(entry), Some(p), Some(sig)) = (
            v.get("entry"),
            v.get("prev").and_then(Value::as_str),
            v.get("sig").and_then(Value::as_str),
        ) else {
            c.problems
                .push(format!("line {n}: not a history line (entry, prev, sig)"));
            prev = String::new();
            continue;
        };
        if !key.verify(&json!({"entry": entry, "prev": p}), sig) {
            c.problems.push(format!(
                "line {n}: the signature does not match (changed, or another key)"
            ));
        }
        if p != prev {
            c.problems.push(format!(
                "line {n}: does not follow the line before it (a line was removed, inserted or reordered)"
            ));
        }
        c.parsed.push(entry.clone());
        prev = sig.to_string();
    }
    c.last_sig = prev;
    c.ok = c.problems.is_empty();
    Ok(c)
}

/// Append `entry` to the history at `path`, chained to its last line (`prev_sig`, from
/// [`verify_history`]); returns the new line's signature.
pub fn append_history(
    key: &Key,
    path: &Path,
    prev_sig: &str,
    entry: &Value,
) -> Result<String, SignError> {
    let sig = key.sign(&json!({"entry": entry, "prev": prev_sig}));
    let line = json!({"entry": entry, "prev": prev_sig, "sig": sig});
    let io = |source| SignError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    writeln!(f, "{}", canonical(&line)).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::from_bytes(b"0123456789abcdef-drill").unwrap()
    }

    #[test]
    fn canonical_json_sorts_members_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b": [ {"z":1,"a":2} ], "a": 1.5, "c": "x\"y"}"#).unwrap();
        assert_eq!(canonical(&v), r#"{"a":1.5,"b":[{"a":2,"z":1}],"c":"x\"y"}"#);
    }

    #[test]
    fn a_signed_report_verifies_until_changed() {
        let k = key();
        let mut r = json!({"rto_s": 0.9, "pass": true});
        sign_report(&k, &mut r).unwrap();
        assert!(verify_report(&k, &r).unwrap());
        let again: Value =
            serde_json::from_str(&serde_json::to_string_pretty(&r).unwrap()).unwrap();
        assert!(
            verify_report(&k, &again).unwrap(),
            "a re-read report still verifies"
        );
        r["rto_s"] = json!(0.8);
        assert!(!verify_report(&k, &r).unwrap());
        let other = Key::from_bytes(b"another key of 16+ bytes").unwrap();
        r["rto_s"] = json!(0.9);
        assert!(!verify_report(&other, &r).unwrap());
        assert!(verify_report(&k, &json!([1])).is_err());
        assert!(verify_report(&k, &json!({"signature": 3})).is_err());
        assert!(Key::from_bytes(b"short").is_none());
    }

    #[test]
    fn the_history_chain_catches_changed_and_removed_lines() {
        let k = key();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.jsonl");
        let mut prev = String::new();
        for i in 0..4 {
            let c = verify_history(&k, &p).unwrap();
            assert!(c.ok, "{:?}", c.problems);
            assert_eq!(c.last_sig, prev);
            prev = append_history(&k, &p, &c.last_sig, &json!({"n": i})).unwrap();
        }
        let c = verify_history(&k, &p).unwrap();
        assert!(c.ok && c.entries == 4, "{:?}", c.problems);
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // A line removed in the middle.
        std::fs::write(&p, format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3])).unwrap();
        let c = verify_history(&k, &p).unwrap();
        assert!(
            !c.ok && c.problems[0].starts_with("line 2:"),
            "{:?}",
            c.problems
        );
        // A line changed.
        let changed = text.replacen("{\"n\":1}", "{\"n\":7}", 1);
        std::fs::write(&p, changed).unwrap();
        let c = verify_history(&k, &p).unwrap();
        assert!(
            !c.ok && c.problems[0].contains("signature"),
            "{:?}",
            c.problems
        );
        // Garbage never panics.
        for junk in [
            "\u{0}\n",
            "[]\n",
            "{\"entry\":1,\"prev\":\"\",\"sig\":\"zz\"}\n",
            "\n\n",
        ] {
            std::fs::write(&p, junk).unwrap();
            assert!(!verify_history(&k, &p).unwrap().ok, "{junk:?}");
        }
        assert!(verify_history(&k, &dir.path().join("none")).unwrap().ok);
    }
}
