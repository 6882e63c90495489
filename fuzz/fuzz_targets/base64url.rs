//! The hand-written base64url decoder (src/core/base64url.rs, written out
//! to save wasm bytes) against the `base64` crate's URL_SAFE_NO_PAD, whose
//! refusals it claims to share: the same bytes or both refuse, and what
//! decodes encodes back to the same text.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use dovecote::core::base64url;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let ours = base64url::decode(text).ok();
    assert_eq!(ours, URL_SAFE_NO_PAD.decode(text).ok(), "{text:?}");
    if let Some(bytes) = ours {
        assert_eq!(base64url::encode(&bytes), text);
    }
    assert_eq!(base64url::decode(&base64url::encode(data)).unwrap(), data);
});
