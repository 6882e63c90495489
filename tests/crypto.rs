//! The encryption core, natively: envelopes (seal/open, format, AAD binding,
//! tampering), the key ring (rotation, counts, conflicts), invite links and
//! key wrapping (DESIGN.md §4).
//!
//! Every test states what a user would notice if it broke: a message that
//! does not come back as written, a forged or moved message that shows up
//! as genuine, a key that leaks, an invite link that crashes the page.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::HashSet;
use std::time::Instant;

use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};
use aes_gcm::Aes256Gcm;
use dovecote::core::envelope::{
    padded_len, Aad, Envelope, OpenError, SealError, SealKind, AAD_LABEL, AAD_LABEL_V2, COMPRESS_ABOVE,
    ENVELOPE_V1, ENVELOPE_VERSION, FLAG_LZ4, HEADER_LEN, INNER_PREFIX_LEN, MAX_OPENED_LEN, MIN_ENVELOPE_LEN,
    MIN_PADDED_LEN,
};
use dovecote::core::keys::{
    kek_aad, Invite, Kek, KeyError, KeyId, KeyRing, ThreadKey, INVITE_VERSION, KEY_ID_LEN, KEY_LEN,
    MAX_ENCRYPTIONS_PER_KEY, NONCE_LEN, ROTATE_AFTER, TAG_LEN, WRAPPED_KEY_LEN, WRAP_VERSION,
};
use dovecote::core::model::{MessageId, ThreadId, UserId, MAX_BODY_BYTES};

// ---------------------------------------------------------------- helpers

/// SplitMix64: a tiny seeded PRNG, so property tests are reproducible.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    fn bytes_up_to(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max);
        self.bytes(len)
    }
}

fn thread(n: u8) -> ThreadId {
    ThreadId::from_parts(1_700_000_000_000 + u64::from(n), [n; 10])
}

fn message(n: u8) -> MessageId {
    MessageId::from_parts(1_700_000_100_000 + u64::from(n), [n.wrapping_add(100); 10])
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn key(id_byte: u8, secret_byte: u8) -> ThreadKey {
    ThreadKey::from_parts(KeyId([id_byte; KEY_ID_LEN]), [secret_byte; KEY_LEN])
}

/// A ring holding one fresh random key, current for `thread_id`.
fn ring_with_new_key(thread_id: ThreadId) -> (KeyRing, KeyId) {
    let key = ThreadKey::generate().unwrap();
    let id = key.id();
    let mut ring = KeyRing::new();
    ring.insert(thread_id, key, 0, true).unwrap();
    (ring, id)
}

fn contains_window(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Text with at least one character from each of the 17 Unicode planes,
/// plus the usual troublemakers: combining marks, ZWJ emoji, RTL, NUL.
fn every_plane_text() -> String {
    let mut text = String::from("héllo wörld, ÅΩЖ中文日本語한국어 ");
    text.push_str("e\u{301} \u{200d} \u{202e}rtl\u{202c} \u{0} \u{fffd} \u{feff} ");
    text.push_str("👩‍👩‍👧‍👦 🏳️‍🌈 😀 𝄞 "); // SMP: emoji, musical symbols
    text.push_str("\u{20000}\u{2a6d6} "); // SIP: CJK Extension B
    text.push_str("\u{30000} "); // TIP: CJK Extension G
    text.push_str("\u{e0001}\u{e0020}\u{e007f} "); // SSP: language tag, tag characters
    text.push_str("\u{f0000}\u{ffffd} \u{100000}\u{10fffd}"); // PUA planes 15 and 16
    for plane in 4..=13u32 {
        // Unassigned but valid scalar values: still text to a chat app.
        text.push(char::from_u32((plane << 16) | 0x1234).unwrap());
    }
    text
}

// ---------------------------------------------------------------- envelopes

#[test]
fn bodies_of_every_shape_come_back_exactly_as_written() {
    let t = thread(1);
    let alice = user("alice");
    let (mut ring, _) = ring_with_new_key(t);
    let chat = "Are we still on for lunch tomorrow? I can book the place by the river at 12:30.";
    let max = "x".repeat(MAX_BODY_BYTES);
    assert_eq!(max.len(), 64 * 1024);
    let unicode = every_plane_text();
    let bodies: [&[u8]; 6] = [b"", b" \n\t ", b"a", chat.as_bytes(), max.as_bytes(), unicode.as_bytes()];

    for (n, body) in bodies.iter().enumerate() {
        let aad = Aad::message(t, message(n as u8), &alice, SealKind::Send);
        let envelope = ring.seal(&aad, body).unwrap();
        let inner_len = envelope.0.len() - HEADER_LEN - TAG_LEN;
        if body.len() <= COMPRESS_ABOVE {
            assert_eq!(inner_len, padded_len(INNER_PREFIX_LEN + body.len()), "body {n}");
        } else {
            assert!(inner_len < body.len() / 10, "64 KiB of one letter is compressed: {inner_len}");
        }
        assert_eq!(ring.open(&aad, &envelope).unwrap(), *body, "body {n}");
        if body.len() >= 8 {
            // The server sees this: no run of the plaintext may show through.
            assert!(!contains_window(&envelope.0, &body[..8]), "plaintext visible in body {n}");
        }
    }
}

#[test]
fn text_from_all_seventeen_unicode_planes_round_trips() {
    let text = every_plane_text();
    let planes: HashSet<u32> = text.chars().map(|c| u32::from(c) >> 16).collect();
    assert_eq!(planes, (0..=16).collect(), "the sample must cover every plane");

    let t = thread(2);
    let bob = user("bob 🐦");
    let (mut ring, _) = ring_with_new_key(t);
    let aad = Aad::message(t, message(1), &bob, SealKind::Edit);
    let envelope = ring.seal(&aad, text.as_bytes()).unwrap();
    let opened = String::from_utf8(ring.open(&aad, &envelope).unwrap()).unwrap();
    assert_eq!(opened, text);

    // Titles use the thread id in the message slot and open the same way.
    let title_aad = Aad::thread_title(t, &bob);
    assert_eq!(title_aad.message_id, t.0);
    let title = ring.seal(&title_aad, text.as_bytes()).unwrap();
    assert_eq!(ring.open(&title_aad, &title).unwrap(), text.as_bytes());
}

#[test]
fn envelope_bytes_are_version_key_id_random_nonce_ciphertext_tag() {
    let t = thread(3);
    let alice = user("alice");
    let (mut ring, key_id) = ring_with_new_key(t);
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    let a = ring.seal(&aad, b"same text").unwrap();
    let b = ring.seal(&aad, b"same text").unwrap();

    assert_eq!(a.0[0], ENVELOPE_VERSION);
    assert_eq!(ENVELOPE_VERSION, 2);
    assert_eq!(&a.0[1..9], &key_id.0);
    assert_eq!(a.key_id(), Ok(key_id));
    assert_eq!(HEADER_LEN, 1 + KEY_ID_LEN + NONCE_LEN);
    assert_eq!(MIN_ENVELOPE_LEN, HEADER_LEN + TAG_LEN);
    // The same text sealed twice looks different (fresh nonce), so the
    // server cannot tell that two messages say the same thing.
    assert_ne!(a.0[9..21], b.0[9..21]);
    assert_ne!(a.0[HEADER_LEN..], b.0[HEADER_LEN..]);

    // The existing serde form is unchanged: unpadded base64url.
    let json = serde_json::to_string(&a).unwrap();
    assert!(!json.contains('=') && !json.contains('+') && !json.contains('/'));
    assert_eq!(serde_json::from_str::<Envelope>(&json).unwrap(), a);
}

/// Builds, by hand and with aes-gcm directly, an envelope in the documented
/// format; the ring must open it. This pins the AAD layout: any change to it
/// (which would make every stored message unreadable) fails here.
#[test]
fn independently_built_envelope_opens_so_the_format_is_pinned() {
    let t = thread(4);
    let m = message(4);
    let sender = user("carol");
    let secret = [0x42u8; KEY_LEN];
    let key_id = KeyId(*b"keyid-01");
    let nonce = [7u8; NONCE_LEN];

    let mut aad = Vec::new();
    for field in [
        &b"dovecote/v1"[..],
        &t.0.to_bytes(),
        &m.0.to_bytes(),
        b"carol",
        &[2u8], // SealKind::Send
    ] {
        aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
        aad.extend_from_slice(field);
    }
    let rust_aad = Aad::message(t, m, &sender, SealKind::Send);
    assert_eq!(rust_aad.to_bytes(), aad);
    assert_eq!(AAD_LABEL, b"dovecote/v1");
    assert_eq!(
        [SealKind::ThreadTitle.to_byte(), SealKind::Send.to_byte(), SealKind::Edit.to_byte()],
        [1, 2, 3]
    );

    let cipher = Aes256Gcm::new((&secret).into());
    let sealed = cipher
        .encrypt(&Nonce::<Aes256Gcm>::from(nonce), Payload { msg: b"pinned format", aad: &aad })
        .unwrap();
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(&key_id.0);
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&sealed);

    let mut ring = KeyRing::new();
    ring.insert(t, ThreadKey::from_parts(key_id, secret), 0, true).unwrap();
    assert_eq!(ring.open(&rust_aad, &Envelope(bytes)).unwrap(), b"pinned format");
}

/// A v2 envelope built by hand, with aes-gcm directly, around `inner` (so
/// tests can make inners the SDK never would).
fn seal_v2_by_hand(
    secret: &[u8; KEY_LEN],
    key_id: KeyId,
    nonce: [u8; NONCE_LEN],
    aad: &Aad<'_>,
    inner: &[u8],
) -> Envelope {
    let mut bytes = vec![2u8];
    bytes.extend_from_slice(&key_id.0);
    bytes.extend_from_slice(&nonce);
    let mut aad_bytes = Vec::new();
    let sender = aad.sender.as_str().as_bytes();
    for field in [
        &b"dovecote/v2"[..],
        &bytes,
        &aad.thread_id.0.to_bytes(),
        &aad.message_id.to_bytes(),
        sender,
        &[aad.kind.to_byte()],
    ] {
        aad_bytes.extend_from_slice(&(field.len() as u64).to_be_bytes());
        aad_bytes.extend_from_slice(field);
    }
    assert_eq!(aad.to_bytes_v2(&bytes), aad_bytes);
    let cipher = Aes256Gcm::new(secret.into());
    let sealed =
        cipher.encrypt(&Nonce::<Aes256Gcm>::from(nonce), Payload { msg: inner, aad: &aad_bytes }).unwrap();
    bytes.extend_from_slice(&sealed);
    Envelope(bytes)
}

/// `flags ‖ len ‖ content ‖ zeros` padded to `padded` bytes.
fn inner(flags: u8, content: &[u8], padded: usize) -> Vec<u8> {
    let mut inner = vec![flags];
    inner.extend_from_slice(&(content.len() as u32).to_be_bytes());
    inner.extend_from_slice(content);
    inner.resize(padded, 0);
    inner
}

/// Pins the v2 layout: a hand-built envelope (header in the AAD, inner
/// padded to its PADMÉ bucket) opens, and the ring's own has the same shape.
#[test]
fn independently_built_v2_envelope_opens_so_the_format_is_pinned() {
    let t = thread(4);
    let m = message(4);
    let sender = user("carol");
    let secret = [0x42u8; KEY_LEN];
    let key_id = KeyId(*b"keyid-02");
    let aad = Aad::message(t, m, &sender, SealKind::Send);
    assert_eq!(AAD_LABEL_V2, b"dovecote/v2");
    let text = b"pinned v2 format";
    let envelope = seal_v2_by_hand(&secret, key_id, [9; NONCE_LEN], &aad, &inner(0, text, MIN_PADDED_LEN));

    let mut ring = KeyRing::new();
    ring.insert(t, ThreadKey::from_parts(key_id, secret), 0, true).unwrap();
    assert_eq!(ring.open(&aad, &envelope).unwrap(), text);
    let own = ring.seal(&aad, text).unwrap();
    assert_eq!(own.0.len(), envelope.0.len());
    assert_eq!(own.0[0], 2);
}

/// Envelopes sealed by the v1 build (tests/fixtures/envelopes_v1.json, made
/// with the release before envelope v2) open with this one.
#[test]
fn v1_envelopes_written_by_the_previous_release_still_open() {
    let fixture: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/envelopes_v1.json")).unwrap();
    let t: ThreadId = serde_json::from_value(fixture["thread_id"].clone()).unwrap();
    let m: MessageId = serde_json::from_value(fixture["message_id"].clone()).unwrap();
    let sender = user(fixture["sender"].as_str().unwrap());
    let key_id = KeyId(fixture["key_id"].as_str().unwrap().as_bytes().try_into().unwrap());
    let secret = [fixture["key_byte"].as_u64().unwrap() as u8; KEY_LEN];
    let mut ring = KeyRing::new();
    ring.insert(t, ThreadKey::from_parts(key_id, secret), 0, true).unwrap();
    let envelopes = fixture["envelopes"].as_array().unwrap();
    assert_eq!(envelopes.len(), 3);
    for case in envelopes {
        let envelope: Envelope = serde_json::from_value(case["envelope"].clone()).unwrap();
        assert_eq!(envelope.0[0], ENVELOPE_V1);
        let kind = match case["kind"].as_str().unwrap() {
            "ThreadTitle" => SealKind::ThreadTitle,
            "Send" => SealKind::Send,
            _ => SealKind::Edit,
        };
        let aad = if kind == SealKind::ThreadTitle {
            Aad::thread_title(t, &sender)
        } else {
            Aad::message(t, m, &sender, kind)
        };
        assert_eq!(ring.open(&aad, &envelope).unwrap(), case["plaintext"].as_str().unwrap().as_bytes());
        // Moved to another kind, a v1 envelope is still refused.
        let moved = Aad { kind: if kind == SealKind::Edit { SealKind::Send } else { SealKind::Edit }, ..aad };
        assert_eq!(ring.open(&moved, &envelope), Err(OpenError::Tampered));
    }
}

/// The header is authenticated: even when the ring holds the same secret
/// under every key id a flip can make (which v1 could not tell apart), and
/// with a downgrade to v1, no header flip opens.
#[test]
fn flipping_any_header_byte_of_a_v2_envelope_makes_it_tampered() {
    let t = thread(4);
    let alice = user("alice");
    let secret = [0x24u8; KEY_LEN];
    let key_id = KeyId(*b"header-k");
    let mut ring = KeyRing::new();
    ring.insert(t, ThreadKey::from_parts(key_id, secret), 0, true).unwrap();
    for pos in 0..KEY_ID_LEN {
        for bit in 0..8 {
            let mut flipped = key_id.0;
            flipped[pos] ^= 1 << bit;
            ring.insert(t, ThreadKey::from_parts(KeyId(flipped), secret), 0, false).unwrap();
        }
    }
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    let envelope = ring.seal(&aad, b"the header is sealed too").unwrap();
    for pos in 0..HEADER_LEN {
        for bit in 0..8 {
            let mut bytes = envelope.0.clone();
            bytes[pos] ^= 1 << bit;
            let expected = match (pos, bytes[0]) {
                (0, ENVELOPE_V1) => OpenError::Tampered,
                (0, v) => OpenError::UnknownVersion(v),
                _ => OpenError::Tampered,
            };
            assert_eq!(ring.open(&aad, &Envelope(bytes)), Err(expected), "byte {pos} bit {bit}");
        }
    }
    let mut downgraded = envelope.0.clone();
    downgraded[0] = ENVELOPE_V1;
    assert_eq!(ring.open(&aad, &Envelope(downgraded)), Err(OpenError::Tampered));
    assert!(ring.open(&aad, &envelope).is_ok());
}

#[test]
fn a_60_kib_compressible_body_is_sealed_under_10_kib_and_random_bytes_are_not_compressed() {
    let t = thread(4);
    let alice = user("alice");
    let (mut ring, _) = ring_with_new_key(t);
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    // A quoted thread pasted back, numbered: 60 KiB of text.
    let mut text = String::new();
    let mut n = 0u64;
    while text.len() < 60 * 1024 {
        text.push_str(&format!(
            "> {n}: Are we still on for lunch tomorrow? I can book the place by the river at 12:30.\n"
        ));
        n += 1;
    }
    let envelope = ring.seal(&aad, text.as_bytes()).unwrap();
    assert!(envelope.0.len() < 10 * 1024, "60 KiB paste sealed to {} bytes", envelope.0.len());
    assert_eq!(ring.open(&aad, &envelope).unwrap(), text.as_bytes());
    // A log with a timestamp and counter on every line: LZ4 still takes it
    // under a fifth (deflate would take it to 5.5 KiB: docs/security.md).
    let mut log = String::new();
    while log.len() < 60 * 1024 {
        log.push_str(&format!(
            "2026-12-02T21:{:02}:{:02} INFO sync round {n} pushed 3 pulled 50\n",
            n / 60 % 60,
            n % 60
        ));
        n += 1;
    }
    let envelope = ring.seal(&aad, log.as_bytes()).unwrap();
    eprintln!(
        "60 KiB paste and log sealed to {} and {} bytes",
        ring.seal(&aad, text.as_bytes()).unwrap().0.len(),
        envelope.0.len()
    );
    assert!(envelope.0.len() < log.len() / 5, "60 KiB log sealed to {} bytes", envelope.0.len());
    assert_eq!(ring.open(&aad, &envelope).unwrap(), log.as_bytes());

    let mut rng = Rng(0x5eed_0003);
    let noise = rng.bytes(COMPRESS_ABOVE + 1000);
    let sealed = ring.seal(&aad, &noise).unwrap();
    assert_eq!(sealed.0.len(), HEADER_LEN + padded_len(INNER_PREFIX_LEN + noise.len()) + TAG_LEN);
    assert_eq!(ring.open(&aad, &sealed).unwrap(), noise);
    assert_eq!(ring.seal(&aad, &vec![b'a'; MAX_OPENED_LEN + 1]), Err(SealError::TooLarge));
}

/// Authentic envelopes whose inner is not what a correct sealer writes: a
/// compressed body declaring more than the limit is refused before any
/// allocation; a block that expands past its declared length, unknown flags,
/// bad lengths and non-zero or wrong-size padding are malformed.
#[test]
fn decompression_bombs_and_malformed_inners_are_refused() {
    let t = thread(4);
    let alice = user("alice");
    let secret = [0x33u8; KEY_LEN];
    let key_id = KeyId(*b"bomb-key");
    let mut ring = KeyRing::new();
    ring.insert(t, ThreadKey::from_parts(key_id, secret), 0, true).unwrap();
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    let seal = |inner: &[u8]| seal_v2_by_hand(&secret, key_id, [5; NONCE_LEN], &aad, inner);
    let lz4 = |declared: u32, plain: &[u8]| {
        let mut content = declared.to_be_bytes().to_vec();
        content.extend_from_slice(&lz4_flex::block::compress(plain));
        content
    };
    let padded = |content: &[u8]| inner(FLAG_LZ4, content, padded_len(INNER_PREFIX_LEN + content.len()));

    // A well-formed compressed inner opens (the bomb cases differ only in
    // what they declare).
    let zeros = vec![0u8; MAX_OPENED_LEN];
    assert_eq!(ring.open(&aad, &seal(&padded(&lz4(MAX_OPENED_LEN as u32, &zeros)))).unwrap(), zeros);
    // 1 GiB of zeros declared, a few hundred bytes sent.
    let bomb = lz4(1 << 30, &vec![0u8; MAX_OPENED_LEN + 1]);
    assert!(bomb.len() < 1024);
    assert_eq!(ring.open(&aad, &seal(&padded(&bomb))), Err(OpenError::TooLarge));
    // Declares the limit, expands past it.
    let liar = lz4(MAX_OPENED_LEN as u32, &vec![0u8; MAX_OPENED_LEN + 1]);
    assert_eq!(ring.open(&aad, &seal(&padded(&liar))), Err(OpenError::Malformed));
    // Declares more than it expands to.
    let short = lz4(1000, &[7u8; 999]);
    assert_eq!(ring.open(&aad, &seal(&padded(&short))), Err(OpenError::Malformed));
    // Garbage as a block.
    let garbage = [&100u32.to_be_bytes()[..], &[0xff; 40]].concat();
    assert_eq!(ring.open(&aad, &seal(&padded(&garbage))), Err(OpenError::Malformed));

    let text = b"hello";
    let bucket = padded_len(INNER_PREFIX_LEN + text.len());
    assert!(ring.open(&aad, &seal(&inner(0, text, bucket))).is_ok());
    assert_eq!(ring.open(&aad, &seal(&inner(2, text, bucket))), Err(OpenError::Malformed), "unknown flag");
    assert_eq!(
        ring.open(&aad, &seal(&inner(0, text, bucket + 1))),
        Err(OpenError::Malformed),
        "past the bucket"
    );
    assert_eq!(
        ring.open(&aad, &seal(&inner(0, text, INNER_PREFIX_LEN + text.len()))),
        Err(OpenError::Malformed),
        "unpadded"
    );
    let mut dirty = inner(0, text, bucket);
    *dirty.last_mut().unwrap() = 1;
    assert_eq!(ring.open(&aad, &seal(&dirty)), Err(OpenError::Malformed), "non-zero padding");
    let mut overlong = inner(0, text, bucket);
    overlong[1..5].copy_from_slice(&(bucket as u32).to_be_bytes());
    assert_eq!(ring.open(&aad, &seal(&overlong)), Err(OpenError::Malformed), "length past the end");
    for cut in 0..INNER_PREFIX_LEN {
        assert_eq!(ring.open(&aad, &seal(&inner(0, b"", MIN_PADDED_LEN)[..cut])), Err(OpenError::Malformed));
    }
}

/// Authentic inners of random shape (what a hostile member can make):
/// opening never panics, returns a typed error or exactly the bytes a
/// correct sealer would have had to put there.
#[test]
fn random_authentic_inners_never_panic_and_open_only_when_well_formed() {
    let mut rng = Rng(0x5eed_0004);
    let t = thread(4);
    let alice = user("alice");
    let secret = [0x44u8; KEY_LEN];
    let key_id = KeyId(*b"fuzz-key");
    let mut ring = KeyRing::new();
    ring.insert(t, ThreadKey::from_parts(key_id, secret), 0, true).unwrap();
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    let mut opened = 0;
    for round in 0..1_200 {
        let plain = match round % 3 {
            0 => rng.bytes_up_to(200),
            1 => vec![b'z'; rng.below(2 * MAX_OPENED_LEN)],
            _ => rng.bytes_up_to(2000),
        };
        let flags = [0, FLAG_LZ4, rng.below(256) as u8][rng.below(3)];
        let mut content = if flags == FLAG_LZ4 {
            let declared = [plain.len() as u32, rng.next_u64() as u32, (plain.len() as u32).wrapping_add(1)]
                [rng.below(3)];
            [&declared.to_be_bytes()[..], &lz4_flex::block::compress(&plain)].concat()
        } else {
            plain.clone()
        };
        if round % 5 == 0 && !content.is_empty() {
            let pos = rng.below(content.len());
            content[pos] ^= 1 + rng.below(255) as u8;
        }
        let bucket = padded_len(INNER_PREFIX_LEN + content.len());
        let padded = [bucket, bucket + rng.below(3), INNER_PREFIX_LEN + content.len()][rng.below(3)];
        let envelope =
            seal_v2_by_hand(&secret, key_id, [3; NONCE_LEN], &aad, &inner(flags, &content, padded));
        match ring.open(&aad, &envelope) {
            Ok(text) => {
                opened += 1;
                assert_eq!(padded, bucket, "round {round}");
                assert!(text.len() <= MAX_OPENED_LEN);
                if flags == 0 {
                    assert_eq!(text, content);
                } else {
                    assert_eq!(flags, FLAG_LZ4);
                    assert_eq!(lz4_flex::block::decompress(&content[4..], text.len()).unwrap(), text);
                }
            }
            Err(e) => {
                assert!(matches!(e, OpenError::Malformed | OpenError::TooLarge), "round {round}: {e:?}")
            }
        }
    }
    eprintln!("{opened} of 1200 opened");
    assert!(opened > 100, "{opened} opened: the well-formed cases were reached");
}

/// PADMÉ: every size maps to a bucket at least as large, buckets are fixed
/// points, monotone, and cost at most 12% (6.25% from 1 KiB); the number of
/// distinct sizes the server can see is small.
#[test]
fn padded_sizes_fall_into_few_buckets() {
    let mut buckets = HashSet::new();
    let mut last = 0;
    for len in 0..=MAX_OPENED_LEN + INNER_PREFIX_LEN + 4 {
        let padded = padded_len(len);
        assert!(padded >= len.max(MIN_PADDED_LEN));
        assert!(padded >= last, "monotone at {len}");
        assert_eq!(padded_len(padded), padded, "a bucket is its own bucket");
        if len > MIN_PADDED_LEN {
            let cost = (padded - len) as f64 / len as f64;
            assert!(cost <= 0.12, "{len} -> {padded}");
            assert!(len < 1024 || cost <= 0.0625, "{len} -> {padded}");
        }
        buckets.insert(padded);
        last = padded;
    }
    assert_eq!(padded_len(0), MIN_PADDED_LEN);
    eprintln!("{} buckets up to {} bytes", buckets.len(), MAX_OPENED_LEN);
    assert!(buckets.len() < 600, "{} buckets", buckets.len());
}

#[test]
fn aad_bytes_differ_for_every_distinct_field_combination() {
    // If a field were dropped from the AAD, or two could run together, an
    // envelope would open in a place it was not sealed for.
    let t = thread(5);
    // Built directly, not parsed: the AAD must stay unambiguous even for
    // sender text that `UserId::parse` would refuse.
    let senders = ["a", "ab", "a\u{1}", "a\u{2}", "b", "", &"z".repeat(300)].map(|s| UserId(s.to_owned()));
    let mut seen = HashSet::new();
    for thread_id in [t, thread(6)] {
        for sender in &senders {
            for kind in [SealKind::ThreadTitle, SealKind::Send, SealKind::Edit] {
                for m in [message(1).0, message(2).0, t.0] {
                    let aad = Aad { thread_id, message_id: m, sender, kind };
                    assert!(seen.insert(aad.to_bytes()), "{aad:?} collides");
                }
            }
        }
    }
    assert_eq!(seen.len(), 2 * senders.len() * 3 * 3);
}

#[test]
fn every_single_bit_flip_fails_to_open_and_is_classified() {
    let t = thread(6);
    let alice = user("alice");
    let (mut ring, _) = ring_with_new_key(t);
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    let envelope = ring.seal(&aad, b"transfer 100 EUR to Bob, thanks!").unwrap();
    let start = Instant::now();
    let mut tried = 0;
    for pos in 0..envelope.0.len() {
        for bit in 0..8 {
            let mut bytes = envelope.0.clone();
            bytes[pos] ^= 1 << bit;
            let err = ring.open(&aad, &Envelope(bytes)).unwrap_err();
            let expected = match pos {
                0 => OpenError::UnknownVersion(ENVELOPE_VERSION ^ (1 << bit)),
                1..=8 => OpenError::KeyMissing,
                _ => OpenError::Tampered,
            };
            assert_eq!(err, expected, "byte {pos} bit {bit}");
            tried += 1;
        }
    }
    assert_eq!(tried, envelope.0.len() * 8);
    eprintln!("bit-flip sweep: {tried} envelopes in {:?}", start.elapsed());
    // The original still opens: the sweep did not pass by breaking the key.
    assert!(ring.open(&aad, &envelope).is_ok());
}

#[test]
fn every_truncation_and_any_extension_is_rejected() {
    let t = thread(7);
    let alice = user("alice");
    let (mut ring, _) = ring_with_new_key(t);
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    for body in [&b""[..], b"hello there"] {
        let envelope = ring.seal(&aad, body).unwrap();
        for len in 0..envelope.0.len() {
            let err = ring.open(&aad, &Envelope(envelope.0[..len].to_vec())).unwrap_err();
            // Too short for header and tag: truncated. Longer cuts still parse
            // but lose tag bytes, so authentication fails.
            let expected = if len < MIN_ENVELOPE_LEN { OpenError::Truncated } else { OpenError::Tampered };
            assert_eq!(err, expected, "cut to {len} of {}", envelope.0.len());
        }
        let mut longer = envelope.0.clone();
        longer.push(0);
        assert_eq!(ring.open(&aad, &Envelope(longer)), Err(OpenError::Tampered));
    }
}

#[test]
fn an_envelope_moved_to_another_message_sender_kind_or_thread_does_not_open() {
    let t = thread(8);
    let other_thread = thread(9);
    let alice = user("alice");
    let mallory = user("mallory");
    let key = ThreadKey::generate().unwrap();
    let mut ring = KeyRing::new();
    ring.insert(t, key.clone(), 0, true).unwrap();

    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    let envelope = ring.seal(&aad, b"I resign").unwrap();
    assert_eq!(ring.open(&aad, &envelope).unwrap(), b"I resign");

    let moved = [
        Aad::message(t, message(2), &alice, SealKind::Send),
        Aad::message(t, message(1), &mallory, SealKind::Send),
        Aad::message(t, message(1), &alice, SealKind::Edit),
        Aad { kind: SealKind::ThreadTitle, ..aad },
        Aad::thread_title(t, &alice),
    ];
    for target in &moved {
        assert_eq!(ring.open(target, &envelope), Err(OpenError::Tampered), "{target:?}");
    }

    // Another thread: this ring holds the key only for `t`, so it does not
    // even try it (key_missing). A device that was (wrongly) given the very
    // same key for the other thread still refuses: the AAD binds the thread.
    let to_other_thread = Aad { thread_id: other_thread, ..aad };
    assert_eq!(ring.open(&to_other_thread, &envelope), Err(OpenError::KeyMissing));
    let mut confused = KeyRing::new();
    confused.insert(other_thread, key, 0, true).unwrap();
    assert_eq!(confused.open(&to_other_thread, &envelope), Err(OpenError::Tampered));
}

#[test]
fn a_key_of_another_thread_never_opens_this_threads_messages() {
    let (a, b) = (thread(10), thread(11));
    let alice = user("alice");
    let mut ring = KeyRing::new();
    ring.insert(a, key(1, 1), 0, true).unwrap();
    ring.insert(b, key(2, 2), 0, true).unwrap();
    let in_a = ring.seal(&Aad::message(a, message(1), &alice, SealKind::Send), b"for a").unwrap();
    // Same message id and sender, claimed for thread b: b's key is not a's.
    let claimed_in_b = Aad::message(b, message(1), &alice, SealKind::Send);
    assert_eq!(ring.open(&claimed_in_b, &in_a), Err(OpenError::KeyMissing));
    assert_eq!(OpenError::KeyMissing.code(), "key_missing");
}

#[test]
fn the_wrong_key_under_a_known_id_is_tampered_and_an_unknown_id_is_missing() {
    let t = thread(12);
    let alice = user("alice");
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    let mut sealer = KeyRing::new();
    sealer.insert(t, key(1, 1), 0, true).unwrap();
    let envelope = sealer.seal(&aad, b"hi").unwrap();

    let mut impostor = KeyRing::new();
    impostor.insert(t, key(1, 9), 0, true).unwrap();
    assert_eq!(impostor.open(&aad, &envelope), Err(OpenError::Tampered));

    let empty = KeyRing::new();
    assert_eq!(empty.open(&aad, &envelope), Err(OpenError::KeyMissing));
    assert_eq!(envelope.key_id(), Ok(KeyId([1; KEY_ID_LEN])), "the missing key can be named");
}

#[test]
fn random_bodies_and_random_damage_property() {
    let mut rng = Rng(0x5eed_0001);
    let t = thread(13);
    let senders = [user("alice"), user("bob"), user("ünïcödé 🐦")];
    let (mut ring, _) = ring_with_new_key(t);
    for round in 0..300 {
        let len = match round % 3 {
            0 => rng.below(16),
            1 => rng.below(512),
            _ => rng.below(4096),
        };
        let body = rng.bytes(len);
        let sender = &senders[rng.below(senders.len())];
        let kind = [SealKind::ThreadTitle, SealKind::Send, SealKind::Edit][rng.below(3)];
        let aad = Aad::message(t, message(rng.below(200) as u8), sender, kind);
        let envelope = ring.seal(&aad, &body).unwrap();
        assert_eq!(ring.open(&aad, &envelope).unwrap(), body, "round {round}");

        let mut damaged = envelope.0.clone();
        let pos = rng.below(damaged.len());
        damaged[pos] ^= 1 + rng.below(255) as u8;
        assert!(ring.open(&aad, &Envelope(damaged)).is_err(), "round {round} byte {pos}");
    }
}

#[test]
fn arbitrary_bytes_never_panic_and_never_open() {
    let mut rng = Rng(0x5eed_0002);
    let t = thread(14);
    let alice = user("alice");
    let (ring, key_id) = ring_with_new_key(t);
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    for round in 0..5_000 {
        let mut bytes = rng.bytes_up_to(80);
        if round % 2 == 0 && bytes.len() >= HEADER_LEN {
            // Half of them look right up to the nonce, to get past parsing.
            bytes[0] = ENVELOPE_VERSION;
            bytes[1..9].copy_from_slice(&key_id.0);
        }
        assert!(ring.open(&aad, &Envelope(bytes)).is_err(), "round {round}");
    }
}

#[test]
fn a_million_seals_never_repeat_a_nonce() {
    let t = thread(15);
    let alice = user("alice");
    let (mut ring, key_id) = ring_with_new_key(t);
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    const SEALS: usize = 1_000_000;
    let mut nonces: HashSet<[u8; NONCE_LEN]> = HashSet::with_capacity(SEALS);
    let start = Instant::now();
    for i in 0..SEALS {
        let envelope = ring.seal(&aad, b"").unwrap();
        let nonce: [u8; NONCE_LEN] = envelope.0[1 + KEY_ID_LEN..HEADER_LEN].try_into().unwrap();
        assert!(nonces.insert(nonce), "nonce repeated at seal {i}");
    }
    eprintln!("{SEALS} seals in {:?}", start.elapsed());
    assert_eq!(nonces.len(), SEALS);
    assert_eq!(ring.encryption_count(key_id), SEALS as u64);
}

// ---------------------------------------------------------------- key ring

#[test]
fn after_rotation_new_messages_use_the_new_key_and_old_ones_still_open() {
    let t = thread(16);
    let alice = user("alice");
    let mut ring = KeyRing::new();
    let old = ThreadKey::generate().unwrap();
    let old_id = old.id();
    ring.insert(t, old, 0, true).unwrap();
    let aad1 = Aad::message(t, message(1), &alice, SealKind::Send);
    let before = ring.seal(&aad1, b"before rotation").unwrap();
    assert_eq!(ring.encryption_count(old_id), 1);

    let new = ThreadKey::generate().unwrap();
    let new_id = new.id();
    assert_ne!(new_id, old_id);
    ring.insert(t, new, 0, true).unwrap();
    assert_eq!(ring.current_key_id(t), Some(new_id));
    assert_eq!(ring.current_key(t).map(ThreadKey::id), Some(new_id));
    assert_eq!(ring.key_ids(t), &[old_id, new_id]);

    let aad2 = Aad::message(t, message(2), &alice, SealKind::Send);
    let after = ring.seal(&aad2, b"after rotation").unwrap();
    assert_eq!(after.key_id(), Ok(new_id));
    assert_eq!(ring.open(&aad1, &before).unwrap(), b"before rotation");
    assert_eq!(ring.open(&aad2, &after).unwrap(), b"after rotation");
    assert_eq!((ring.encryption_count(old_id), ring.encryption_count(new_id)), (1, 1));

    // Inserting the old key again (e.g. on reload) neither demotes the new
    // one nor lowers a count.
    let (_, old_again) = ring.key(old_id).map(|(th, k)| (th, k.clone())).unwrap();
    ring.insert(t, old_again, 0, false).unwrap();
    assert_eq!(ring.current_key_id(t), Some(new_id));
    assert_eq!(ring.encryption_count(old_id), 1);
}

#[test]
fn rotation_is_due_at_the_threshold_and_sealing_stops_at_the_hard_limit() {
    let t = thread(17);
    let alice = user("alice");
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);
    let mut ring = KeyRing::new();
    let k = key(3, 3);
    ring.insert(t, k, ROTATE_AFTER - 2, true).unwrap();
    assert!(!ring.needs_rotation(t));
    ring.seal(&aad, b"x").unwrap();
    assert!(!ring.needs_rotation(t), "count {} is below the threshold", ROTATE_AFTER - 1);
    ring.seal(&aad, b"x").unwrap();
    assert!(ring.needs_rotation(t), "count reached ROTATE_AFTER");
    assert_eq!(ring.encryption_count(KeyId([3; KEY_ID_LEN])), ROTATE_AFTER);

    // The limits are far below 2^32 random nonces, and rotation comes first.
    const { assert!(ROTATE_AFTER < MAX_ENCRYPTIONS_PER_KEY) };
    const { assert!(MAX_ENCRYPTIONS_PER_KEY <= 1 << 24) };

    let mut worn = KeyRing::new();
    worn.insert(t, key(4, 4), MAX_ENCRYPTIONS_PER_KEY - 1, true).unwrap();
    assert!(worn.seal(&aad, b"last one").is_ok());
    let err = worn.seal(&aad, b"one too many").unwrap_err();
    assert_eq!(err, SealError::KeyExhausted(KeyId([4; KEY_ID_LEN])));
    assert_eq!(err.code(), "key_exhausted");
    assert_eq!(worn.encryption_count(KeyId([4; KEY_ID_LEN])), MAX_ENCRYPTIONS_PER_KEY);

    // A fresh current key clears it.
    worn.insert(t, key(5, 5), 0, true).unwrap();
    assert!(!worn.needs_rotation(t));
    assert!(worn.seal(&aad, b"fresh").is_ok());
}

#[test]
fn a_thread_without_a_current_key_cannot_seal_but_opens_what_it_has() {
    let t = thread(18);
    let alice = user("alice");
    let aad = Aad::message(t, message(1), &alice, SealKind::Send);

    let mut ring = KeyRing::new();
    assert!(!ring.has_thread(t));
    assert_eq!(ring.seal(&aad, b"x"), Err(SealError::NoCurrentKey));
    assert_eq!(SealError::NoCurrentKey.code(), "no_current_key");
    assert!(!ring.needs_rotation(t));

    let mut sealer = KeyRing::new();
    sealer.insert(t, key(6, 6), 0, true).unwrap();
    let envelope = sealer.seal(&aad, b"old message").unwrap();

    ring.insert(t, key(6, 6), 0, false).unwrap();
    assert!(ring.has_thread(t));
    assert_eq!(ring.current_key_id(t), None);
    assert_eq!(ring.open(&aad, &envelope).unwrap(), b"old message");
    assert_eq!(ring.seal(&aad, b"x"), Err(SealError::NoCurrentKey));

    ring.remove_thread(t);
    assert!(!ring.has_thread(t));
    assert_eq!(ring.open(&aad, &envelope), Err(OpenError::KeyMissing));
}

#[test]
fn a_reused_key_id_cannot_displace_a_key_the_ring_holds() {
    let (a, b) = (thread(19), thread(20));
    let alice = user("alice");
    let aad = Aad::message(a, message(1), &alice, SealKind::Send);
    let mut ring = KeyRing::new();
    ring.insert(a, key(7, 7), 5, true).unwrap();
    let envelope = ring.seal(&aad, b"mine").unwrap();

    // A hostile invite for thread b reusing a's key id, or other bytes
    // under the same id for a: both refused, a keeps working.
    let id = KeyId([7; KEY_ID_LEN]);
    assert_eq!(ring.insert(b, key(7, 7), 0, true), Err(KeyError::KeyIdConflict(id)));
    assert_eq!(ring.insert(a, key(7, 8), 0, true), Err(KeyError::KeyIdConflict(id)));
    assert!(!ring.has_thread(b));
    assert_eq!(ring.open(&aad, &envelope).unwrap(), b"mine");
    assert_eq!(ring.encryption_count(id), 6);

    // The same key again with a higher count raises it (never lowers it).
    ring.insert(a, key(7, 7), 100, true).unwrap();
    assert_eq!(ring.encryption_count(id), 100);
    ring.insert(a, key(7, 7), 3, true).unwrap();
    assert_eq!(ring.encryption_count(id), 100);
}

// ---------------------------------------------------------------- keys and ids

#[test]
fn key_ids_are_random_and_round_trip_as_base64url() {
    let a = ThreadKey::generate().unwrap();
    let b = ThreadKey::generate().unwrap();
    assert_ne!(a.id(), b.id());
    assert_ne!(a.secret_bytes(), b.secret_bytes());

    let id = KeyId(*b"\x00\x01\xfe\xffabcd");
    let text = id.to_string();
    assert_eq!(text, "AAH-_2FiY2Q");
    assert_eq!(text.parse::<KeyId>(), Ok(id));
    assert_eq!(serde_json::to_string(&id).unwrap(), "\"AAH-_2FiY2Q\"");
    assert_eq!(serde_json::from_str::<KeyId>("\"AAH-_2FiY2Q\"").unwrap(), id);
    assert_eq!(format!("{id:?}"), "KeyId(AAH-_2FiY2Q)");
    for bad in ["", "AAH-_2FiY2", "AAH-_2FiY2Q0", "AAH+/2FiY2Q", "AAH-_2FiY2Q=", "AAH-_2FiY2R", "ü"] {
        assert_eq!(bad.parse::<KeyId>(), Err(KeyError::InvalidKeyId), "{bad:?}");
    }
    assert!(serde_json::from_str::<KeyId>("\"nope\"").is_err());
}

#[test]
fn debug_output_never_shows_key_bytes() {
    let t = thread(21);
    let key = ThreadKey::generate().unwrap();
    let secret = *key.secret_bytes();
    let invite = Invite { thread_id: t, key: key.clone(), server_invite: Some("tok-123".into()) };
    let mut ring = KeyRing::new();
    ring.insert(t, key.clone(), 0, true).unwrap();
    let kek = Kek::from_bytes(&[9; KEY_LEN]);

    let code = invite.encode();
    let forms = [
        format!("{key:?}"),
        format!("{key:#?}"),
        format!("{invite:?}"),
        format!("{ring:?}"),
        format!("{kek:?}"),
    ];
    let secret_renderings = [
        format!("{secret:?}"),
        secret.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        code[36..70].to_owned(), // inside the key's stretch of the invite code
    ];
    for form in &forms {
        for leak in &secret_renderings {
            assert!(!form.contains(leak.as_str()), "{form} shows the key");
        }
        assert!(!form.contains("tok-123"), "{form} shows the server invite");
    }
    assert!(forms[0].contains(&key.id().to_string()), "ids are fine to show");
}

// ---------------------------------------------------------------- invites

#[test]
fn invites_round_trip_through_a_url_fragment() {
    let t = thread(22);
    for server_invite in
        [None, Some(String::new()), Some("inv_8f3k".to_owned()), Some("ünï 🐦 #&=?".to_owned())]
    {
        let key = ThreadKey::generate().unwrap();
        let invite = Invite { thread_id: t, key, server_invite: server_invite.clone() };
        let code = invite.encode();
        assert!(
            code.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{code} is not safe in a URL fragment"
        );
        let back = Invite::decode(&code).unwrap();
        assert_eq!(back.thread_id, t);
        assert_eq!(back.key.id(), invite.key.id());
        assert_eq!(back.key.secret_bytes(), invite.key.secret_bytes());
        assert_eq!(back.server_invite, server_invite);

        let fragment = invite.to_fragment();
        assert_eq!(fragment, format!("#k={code}"));
        for form in [fragment.clone(), fragment[1..].to_owned(), code.clone(), format!(" {fragment}\n")] {
            let back = Invite::from_fragment(&form).unwrap();
            assert_eq!(back.key.secret_bytes(), invite.key.secret_bytes(), "{form:?}");
        }
    }
}

#[test]
fn damaged_invites_give_typed_errors() {
    let t = thread(23);
    let invite = Invite { thread_id: t, key: key(8, 8), server_invite: None };
    let code = invite.encode();
    let raw = |bytes: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
    let valid = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &code).unwrap();
    assert_eq!(valid.len(), 1 + 16 + 8 + 32 + 1);
    assert_eq!(valid[0], INVITE_VERSION);

    let err = |s: &str| Invite::decode(s).unwrap_err();
    assert_eq!(err(""), KeyError::InviteTruncated);
    assert_eq!(err("!!!!"), KeyError::InviteEncoding);
    assert_eq!(err(&format!("{code}=")), KeyError::InviteEncoding, "padding is not canonical");
    assert_eq!(err(&format!("{}+{}", &code[..10], &code[11..])), KeyError::InviteEncoding);
    assert_eq!(err(&format!(" {code}")), KeyError::InviteEncoding, "decode itself is strict");

    let mut v2 = valid.clone();
    v2[0] = 2;
    assert_eq!(err(&raw(&v2)), KeyError::InviteVersion(2));
    assert_eq!(err(&raw(&[0])), KeyError::InviteVersion(0));
    for len in 1..valid.len() {
        assert_eq!(err(&raw(&valid[..len])), KeyError::InviteTruncated, "cut to {len} bytes");
    }
    // A link cut off mid-character: base64 of a prefix, minus its last char.
    for cut in 1..code.len() {
        assert!(Invite::decode(&code[..cut]).is_err(), "cut to {cut} chars");
    }

    let mut bad_flag = valid.clone();
    *bad_flag.last_mut().unwrap() = 2;
    assert_eq!(err(&raw(&bad_flag)), KeyError::InviteMalformed("unknown flag"));
    let mut trailing = valid.clone();
    trailing.push(b'x');
    assert!(matches!(err(&raw(&trailing)), KeyError::InviteMalformed(_)));
    let mut not_utf8 = valid.clone();
    *not_utf8.last_mut().unwrap() = 1;
    not_utf8.extend_from_slice(&[0xff, 0xfe]);
    assert!(matches!(err(&raw(&not_utf8)), KeyError::InviteMalformed(_)));

    let codes: Vec<_> = [
        KeyError::InviteTruncated,
        KeyError::InviteEncoding,
        KeyError::InviteVersion(2),
        KeyError::InviteMalformed("x"),
    ]
    .iter()
    .map(KeyError::code)
    .collect();
    assert_eq!(codes, ["invite_truncated", "invite_encoding", "invite_version", "invite_malformed"]);
}

#[test]
fn random_text_and_mutated_invites_never_panic_and_decode_canonically() {
    let mut rng = Rng(0x5eed_0003);
    let alphabet: Vec<char> =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/#k ü🐦\0".chars().collect();
    let valid = Invite { thread_id: thread(24), key: key(9, 9), server_invite: Some("srv".into()) }.encode();
    let valid_chars: Vec<char> = valid.chars().collect();
    let mut accepted = 0;
    for round in 0..20_000 {
        let candidate: String = match round % 4 {
            0 => (0..rng.below(120)).map(|_| alphabet[rng.below(alphabet.len())]).collect(),
            1 => base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, {
                let mut b = rng.bytes_up_to(100);
                if let Some(first) = b.first_mut() {
                    *first = INVITE_VERSION; // get past the version check
                }
                b
            }),
            _ => {
                let mut chars = valid_chars.clone();
                for _ in 0..1 + rng.below(3) {
                    match rng.below(3) {
                        0 if !chars.is_empty() => {
                            let i = rng.below(chars.len());
                            chars[i] = alphabet[rng.below(alphabet.len())];
                        }
                        1 if !chars.is_empty() => {
                            chars.remove(rng.below(chars.len()));
                        }
                        _ => chars.insert(rng.below(chars.len() + 1), alphabet[rng.below(alphabet.len())]),
                    }
                }
                chars.into_iter().collect()
            }
        };
        let _ = Invite::from_fragment(&candidate);
        if let Ok(invite) = Invite::decode(&candidate) {
            // Whatever decodes re-encodes to the very same text: one invite,
            // one spelling, so nothing can be smuggled in non-canonical bits.
            assert_eq!(invite.encode(), candidate, "round {round}");
            accepted += 1;
        }
    }
    assert!(accepted > 0, "the generator never produced a decodable invite: the test proves nothing");
}

// ---------------------------------------------------------------- key wrapping

#[test]
fn wrapped_keys_unwrap_only_with_the_same_kek_thread_and_key_id() {
    let t = thread(25);
    let key = ThreadKey::generate().unwrap();
    let kek = Kek::generate().unwrap();
    let wrapped = kek.wrap(t, &key).unwrap();
    assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
    assert_eq!(wrapped[0], WRAP_VERSION);
    assert!(!contains_window(&wrapped, &key.secret_bytes()[..8]), "key visible in wrapped bytes");
    assert_ne!(kek.wrap(t, &key).unwrap(), wrapped, "fresh nonce per wrap");

    let back = kek.unwrap(t, key.id(), &wrapped).unwrap();
    assert_eq!(back.id(), key.id());
    assert_eq!(back.secret_bytes(), key.secret_bytes());

    let other_kek = Kek::generate().unwrap();
    assert_eq!(other_kek.unwrap(t, key.id(), &wrapped).unwrap_err(), KeyError::UnwrapFailed);
    assert_eq!(kek.unwrap(thread(26), key.id(), &wrapped).unwrap_err(), KeyError::UnwrapFailed);
    assert_eq!(kek.unwrap(t, KeyId([0; KEY_ID_LEN]), &wrapped).unwrap_err(), KeyError::UnwrapFailed);
    assert_eq!(KeyError::UnwrapFailed.code(), "unwrap_failed");

    for pos in 1..wrapped.len() {
        let mut bad = wrapped.clone();
        bad[pos] ^= 0x01;
        assert_eq!(kek.unwrap(t, key.id(), &bad).unwrap_err(), KeyError::UnwrapFailed, "byte {pos}");
    }
    for len in 0..wrapped.len() {
        assert!(kek.unwrap(t, key.id(), &wrapped[..len]).is_err(), "cut to {len}");
    }
    assert_eq!(kek.unwrap(t, key.id(), &wrapped[..1]).unwrap_err(), KeyError::WrappedTruncated);
    let mut v2 = wrapped.clone();
    v2[0] = 2;
    assert_eq!(kek.unwrap(t, key.id(), &v2).unwrap_err(), KeyError::WrappedVersion(2));
    let mut longer = wrapped.clone();
    longer.push(0);
    assert!(kek.unwrap(t, key.id(), &longer).is_err());
}

#[test]
fn kek_aad_layout_is_pinned_for_the_webcrypto_path() {
    // The browser wraps with WebCrypto using these bytes; a change here
    // strands every key stored in IndexedDB.
    let t = thread(27);
    let id = KeyId(*b"ABCDEFGH");
    let mut expected = b"dovecote/kek/v1".to_vec();
    expected.extend_from_slice(&t.0.to_bytes());
    expected.extend_from_slice(b"ABCDEFGH");
    assert_eq!(kek_aad(t, id).to_vec(), expected);

    // And a key wrapped "by WebCrypto" (AES-GCM, ct ‖ tag) with that AAD
    // unwraps natively.
    let kek_bytes = [5u8; KEY_LEN];
    let nonce = [3u8; NONCE_LEN];
    let secret = [0xabu8; KEY_LEN];
    let sealed = Aes256Gcm::new((&kek_bytes).into())
        .encrypt(&Nonce::<Aes256Gcm>::from(nonce), Payload { msg: &secret, aad: &expected })
        .unwrap();
    let mut wrapped = vec![WRAP_VERSION];
    wrapped.extend_from_slice(&nonce);
    wrapped.extend_from_slice(&sealed);
    let key = Kek::from_bytes(&kek_bytes).unwrap(t, id, &wrapped).unwrap();
    assert_eq!(key.secret_bytes(), &secret);
}

#[test]
fn error_codes_are_stable() {
    let open: Vec<_> =
        [OpenError::Truncated, OpenError::UnknownVersion(9), OpenError::KeyMissing, OpenError::Tampered]
            .iter()
            .map(OpenError::code)
            .collect();
    assert_eq!(open, ["truncated", "unknown_version", "key_missing", "tampered"]);
    let seal: Vec<_> = [SealError::NoCurrentKey, SealError::KeyExhausted(KeyId([0; 8])), SealError::TooLarge]
        .iter()
        .map(SealError::code)
        .collect();
    assert_eq!(seal, ["no_current_key", "key_exhausted", "too_large"]);
    let key: Vec<_> = [
        KeyError::InvalidKeyId,
        KeyError::WrappedTruncated,
        KeyError::WrappedVersion(2),
        KeyError::UnwrapFailed,
        KeyError::KeyIdConflict(KeyId([0; 8])),
    ]
    .iter()
    .map(KeyError::code)
    .collect();
    assert_eq!(
        key,
        ["invalid_key_id", "wrapped_truncated", "wrapped_version", "unwrap_failed", "key_id_conflict"]
    );
}

#[test]
fn ring_ciphers_are_zeroized_on_drop() {
    // The ring keeps one expanded AES key per thread key; this stops
    // compiling if aes-gcm's `zeroize` feature is ever dropped from
    // Cargo.toml and those schedules would linger in memory after drop.
    fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    zeroized_on_drop::<Aes256Gcm>();
    zeroized_on_drop::<zeroize::Zeroizing<[u8; KEY_LEN]>>();
}
