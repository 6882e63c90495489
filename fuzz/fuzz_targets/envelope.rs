//! Envelope bytes as the server hands them over, opened with the thread's
//! key: whatever the bytes, a typed error and no panic, and nothing but an
//! envelope sealed with the key opens. Then the input as a plaintext:
//! sealed, it opens to itself, and flipping any of its first bytes (the
//! header, the nonce, the start of the ciphertext) makes it fail.
#![no_main]

use dovecote::core::envelope::{Aad, Envelope, MAX_OPENED_LEN};
use dovecote::core::keys::{KeyId, KeyRing, ThreadKey, KEY_ID_LEN};
use dovecote::core::model::{Id, ThreadId, UserId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let thread = ThreadId(Id::from_bytes([1; 16]));
    let mut ring = KeyRing::new();
    ring.insert(thread, ThreadKey::from_parts(KeyId([7; KEY_ID_LEN]), [9; 32]), 0, true).unwrap();
    let sender = UserId("alice".into());
    let aad = Aad::thread_title(thread, &sender);

    let outside = Envelope(data.to_vec());
    let _ = outside.key_id();
    assert!(ring.open(&aad, &outside).is_err(), "bytes the fuzzer made opened");

    if data.len() > MAX_OPENED_LEN {
        return;
    }
    let sealed = ring.seal(&aad, data).expect("a current key seals");
    assert_eq!(ring.open(&aad, &sealed).expect("its own envelope opens"), data);
    for i in 0..sealed.0.len().min(64) {
        let mut flipped = sealed.clone();
        flipped.0[i] ^= 0x01;
        assert!(ring.open(&aad, &flipped).is_err(), "byte {i} flipped, still opened");
    }
});
