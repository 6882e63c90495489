//! Serde helper: bytes as unpadded base64url strings, the one binary
//! encoding used in JSON and in IndexedDB records.

use serde::{Deserialize, Deserializer, Serializer};

// Written out rather than taken from the `base64` crate, whose generic
// engine costs about 7 KiB of wasm; same output, and the same refusals as
// its URL_SAFE_NO_PAD: padding, other alphabets, a dangling character and
// non-zero trailing bits.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Text that is not canonical unpadded base64url: the offset of the first
/// bad character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid base64url at offset {0}")]
pub struct DecodeError(pub usize);

/// Encodes bytes as unpadded base64url.
pub fn encode(bytes: &[u8]) -> String {
    // Sized up front: the text of a key is never copied by a reallocation.
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
        }
    }
    out
}

/// Decodes unpadded base64url.
pub fn decode(text: &str) -> Result<Vec<u8>, DecodeError> {
    let text = text.as_bytes();
    if text.len() % 4 == 1 {
        return Err(DecodeError(text.len() - 1));
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    for (c, chunk) in text.chunks(4).enumerate() {
        let mut n = 0u32;
        for (i, &ch) in chunk.iter().enumerate() {
            let v = match ch {
                b'A'..=b'Z' => ch - b'A',
                b'a'..=b'z' => ch - b'a' + 26,
                b'0'..=b'9' => ch - b'0' + 52,
                b'-' => 62,
                b'_' => 63,
                _ => return Err(DecodeError(c * 4 + i)),
            };
            n |= u32::from(v) << (18 - 6 * i);
        }
        let len = chunk.len() - 1;
        if n & ((1 << (24 - 8 * len)) - 1) != 0 {
            return Err(DecodeError(c * 4 + len));
        }
        for i in 0..len {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Ok(out)
}

/// `#[serde(with = "crate::core::base64url")]` for `Vec<u8>` fields.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&encode(bytes))
}

/// `#[serde(with = "crate::core::base64url")]` for `Vec<u8>` fields.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    decode(&text).map_err(|e| serde::de::Error::custom(format!("not base64url: {e}")))
}
