//! Invite codes, as pasted or taken from a link's fragment: any text gives
//! an invite or a typed error, and an invite that decodes encodes back to
//! the same code (one code per invite).
#![no_main]

use dovecote::core::keys::Invite;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(code) = std::str::from_utf8(data) else { return };
    if let Ok(invite) = Invite::decode(code) {
        assert_eq!(invite.encode(), code);
    }
});
