//! Sealed payloads: AES-256-GCM envelopes (DESIGN.md §4).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Sealed bytes: `version ‖ key_id ‖ nonce ‖ ciphertext+tag`.
///
/// Serialized as an unpadded base64url string, in JSON and in IndexedDB alike.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope(pub Vec<u8>);

impl std::fmt::Debug for Envelope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Envelope({} bytes)", self.0.len())
    }
}

impl Serialize for Envelope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map(Envelope)
            .map_err(|e| serde::de::Error::custom(format!("envelope is not base64url: {e}")))
    }
}
