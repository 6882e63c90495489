//! Thread keys, the device's key ring, invite links and key wrapping
//! (DESIGN.md §4).
//!
//! Every thread has a random 256-bit AES-GCM key, named by a random 64-bit
//! [`KeyId`] that travels in clear in every envelope so a reader knows which
//! key to use. This module keeps the bookkeeping around those keys:
//!
//! - [`ThreadKey`]: one key; its bytes are zeroized on drop and never printed.
//! - [`KeyRing`]: the keys this device knows, per thread, with one ready
//!   cipher per key, which key is current for sealing, and how many times
//!   each key has sealed (so it is rotated long before random nonces could
//!   collide). Sealing and opening live in [`crate::core::envelope`], which
//!   owns the envelope format.
//! - [`Invite`]: a thread id and key (plus an optional server invite token)
//!   as one base64url string for the fragment of an invite link (`#k=...`),
//!   which browsers never send to a server.
//! - [`Kek`]: a key-encryption key that wraps thread keys for storage. The
//!   browser keeps its KEK as a non-extractable WebCrypto key instead; both
//!   use the same wrapped layout and the same [`kek_aad`], so the formats
//!   cannot drift apart.
//!
//! Randomness comes from `getrandom` (the OS, or `crypto.getRandomValues` on
//! wasm32). Nothing here logs, and no `Debug` output contains key bytes.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::Nonce;
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::core::base64url;
use crate::core::model::{Id, ThreadId};

/// Length of a [`KeyId`] in bytes.
pub const KEY_ID_LEN: usize = 8;
/// Length of a thread key (AES-256) in bytes.
pub const KEY_LEN: usize = 32;
/// Length of an AES-GCM nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM authentication tag in bytes.
pub const TAG_LEN: usize = 16;

/// Seals with one key after which [`KeyRing::needs_rotation`] says to rotate.
///
/// Nonces are 96 random bits, so the bound that matters is the birthday
/// bound: NIST SP 800-38D §8.3 caps random-nonce AES-GCM at 2^32 seals per
/// key *in total*, which keeps the chance of any repeated nonce (a repeat
/// leaks the XOR of two plaintexts and the GHASH key) under 2^-32. This count
/// is per device, but everyone in a thread shares its key, so the budget is
/// split: 2^23 per device leaves room for 2^9 devices (e.g. the 256 members
/// of [`crate::core::model::MAX_MEMBERS`] with two devices each) before the
/// total could reach 2^32. One device alone at 2^23 seals has a collision
/// chance of about 2^-51. No real chat gets near this; the limit exists so
/// that a runaway bot cannot wear a key out.
pub const ROTATE_AFTER: u64 = 1 << 23;

/// Seals with one key after which sealing is refused outright.
///
/// Twice [`ROTATE_AFTER`], so the engine has ample slack to distribute a new
/// key after rotation is due, while 2^8 devices at this hard stop still stay
/// within the 2^32 total of NIST SP 800-38D. Failing closed here is better
/// than a repeated nonce.
pub const MAX_ENCRYPTIONS_PER_KEY: u64 = 1 << 24;

/// Fills `buf` from the platform's secure random source.
pub(crate) fn random_fill(buf: &mut [u8]) -> Result<(), getrandom::Error> {
    getrandom::fill(buf)
}

/// Names one thread key: 8 random bytes, chosen when the key is made.
///
/// Shown, and serialized, as 11 characters of unpadded base64url (the same
/// alphabet as envelopes and invites, so one decoder serves all three).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl KeyId {
    /// A fresh random key id.
    pub fn generate() -> Result<KeyId, KeyError> {
        let mut id = [0u8; KEY_ID_LEN];
        random_fill(&mut id).map_err(KeyError::Random)?;
        Ok(KeyId(id))
    }

    /// The id's bytes.
    pub fn to_bytes(self) -> [u8; KEY_ID_LEN] {
        self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64url::encode(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl FromStr for KeyId {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        // Decoding into a fixed buffer bounds the work on hostile input, and
        // the exact-length check refuses ids that are a prefix of a real one.
        if s.len() > KEY_ID_LEN.div_ceil(3) * 4 {
            return Err(KeyError::InvalidKeyId);
        }
        match base64url::decode(s).map(<[u8; KEY_ID_LEN]>::try_from) {
            Ok(Ok(id)) => Ok(KeyId(id)),
            _ => Err(KeyError::InvalidKeyId),
        }
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One thread key: a key id and 256 secret bits.
///
/// The secret is zeroized when the key is dropped. Moves of the value may
/// leave copies on the stack that are not; keep keys in one place (a
/// [`KeyRing`]) rather than passing them around. `Debug` never shows the
/// secret.
#[derive(Clone)]
pub struct ThreadKey {
    id: KeyId,
    secret: Zeroizing<[u8; KEY_LEN]>,
}

impl ThreadKey {
    /// A fresh random key with a fresh random id.
    pub fn generate() -> Result<ThreadKey, KeyError> {
        let id = KeyId::generate()?;
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        random_fill(&mut secret[..]).map_err(KeyError::Random)?;
        Ok(ThreadKey { id, secret })
    }

    /// A key from its id and bytes (after unwrapping, or from an invite).
    pub fn from_parts(id: KeyId, secret: [u8; KEY_LEN]) -> ThreadKey {
        ThreadKey { id, secret: Zeroizing::new(secret) }
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The secret bytes, for wrapping. Do not copy them anywhere that is not
    /// zeroized.
    pub fn secret_bytes(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }

    /// An AES-256-GCM instance for this key (runs the key schedule once).
    fn cipher(&self) -> Aes256Gcm {
        // `From<&[u8; 32]> for &Array` borrows: no unzeroized copy is made.
        Aes256Gcm::new((&*self.secret).into())
    }

    /// Whether two keys have the same id and the same bytes.
    fn same_as(&self, other: &ThreadKey) -> bool {
        // No early exit, so the comparison time does not depend on where the
        // secrets differ.
        let diff = self.secret.iter().zip(other.secret.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        self.id == other.id && diff == 0
    }
}

impl fmt::Debug for ThreadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadKey").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// Why a key operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The platform's secure random source failed; nothing was made.
    #[error("secure random numbers are unavailable")]
    Random(getrandom::Error),
    /// A key id that is not 11 characters of base64url.
    #[error("not a key id")]
    InvalidKeyId,
    /// An invite that is not base64url text.
    #[error("the invite link is damaged (not base64url)")]
    InviteEncoding,
    /// An invite that ends too early; usually a link cut off when copied.
    #[error("the invite link is incomplete")]
    InviteTruncated,
    /// An invite made by a newer (or unknown) version of dovecote.
    #[error("the invite link has unknown version {0}")]
    InviteVersion(u8),
    /// An invite with a known version whose contents do not parse.
    #[error("the invite link is damaged: {0}")]
    InviteMalformed(&'static str),
    /// A wrapped key that is too short to be one.
    #[error("the wrapped key is truncated")]
    WrappedTruncated,
    /// A wrapped key in an unknown format version.
    #[error("the wrapped key has unknown version {0}")]
    WrappedVersion(u8),
    /// A wrapped key that does not unwrap: another KEK, another thread or key
    /// id, or damaged bytes.
    #[error("the wrapped key does not unwrap with this key-encryption key")]
    UnwrapFailed,
    /// A key id the ring already holds for another thread, or with other
    /// bytes. Random ids do not collide, so this is a forged or broken key.
    #[error("key id {0} is already in use for another key")]
    KeyIdConflict(KeyId),
}

impl KeyError {
    /// A stable machine-readable code for this error (for JS `Error.code`).
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Random(_) => "random_unavailable",
            KeyError::InvalidKeyId => "invalid_key_id",
            KeyError::InviteEncoding => "invite_encoding",
            KeyError::InviteTruncated => "invite_truncated",
            KeyError::InviteVersion(_) => "invite_version",
            KeyError::InviteMalformed(_) => "invite_malformed",
            KeyError::WrappedTruncated => "wrapped_truncated",
            KeyError::WrappedVersion(_) => "wrapped_version",
            KeyError::UnwrapFailed => "unwrap_failed",
            KeyError::KeyIdConflict(_) => "key_id_conflict",
        }
    }
}

/// One key in a ring.
struct RingEntry {
    thread_id: ThreadId,
    key: ThreadKey,
    /// Built once at insert: AES key expansion and the GHASH key are not
    /// redone per message. Zeroized on drop (aes-gcm's `zeroize` feature).
    cipher: Aes256Gcm,
    encryptions: u64,
}

/// Why [`KeyRing::reserve_seal`] gave no cipher.
pub(crate) enum ReserveError {
    NoCurrentKey,
    Exhausted(KeyId),
}

/// The thread keys known to this device.
///
/// For each key: the thread it belongs to, a ready AES-256-GCM cipher, and
/// how many times this device sealed with it. For each thread: which key is
/// current, i.e. used for new seals. Older keys stay to open older envelopes.
///
/// The encryption counts must survive restarts: the engine persists them
/// (with the wrapped keys) and passes them back to [`KeyRing::insert`]. A
/// count lost in a crash undercounts by a few messages, which the margins of
/// [`ROTATE_AFTER`] absorb.
#[derive(Default)]
pub struct KeyRing {
    /// Every key, in insert order. A device holds a few keys per thread, so
    /// a scan is as fast as a hash map here and much smaller in wasm.
    keys: Vec<RingEntry>,
    /// The current key of each thread that has one.
    current: Vec<(ThreadId, KeyId)>,
    /// Plaintext and content (compressed or not, before padding) bytes
    /// sealed since [`KeyRing::take_sealed`] last asked.
    pub(crate) sealed: SealedBytes,
}

/// What seals did to sizes: plaintext in, content out (compressed or not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealedBytes {
    /// Plaintext bytes sealed.
    pub plaintext: u64,
    /// Their content bytes in the envelopes (smaller when compressed).
    pub content: u64,
}

impl KeyRing {
    /// An empty ring.
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Plaintext and content bytes sealed since the last call, for the
    /// sync metrics' compression ratio; the counters start again at zero.
    pub fn take_sealed(&mut self) -> SealedBytes {
        std::mem::take(&mut self.sealed)
    }

    fn entry(&self, key_id: KeyId) -> Option<&RingEntry> {
        self.keys.iter().find(|entry| entry.key.id() == key_id)
    }

    /// Adds `key` for `thread_id`, having sealed `encryptions_so_far` times
    /// with it before (0 for a new key), and makes it the thread's current
    /// key if `current`.
    ///
    /// Inserting a key the ring already holds (same thread, id and bytes) is
    /// allowed: the count becomes the larger of the two, as counts must never
    /// go down, and `current = false` does not demote it. A key id already
    /// held for another thread or with other bytes is refused with
    /// [`KeyError::KeyIdConflict`], so a hostile invite cannot displace the
    /// key of a thread the device is already in.
    pub fn insert(
        &mut self,
        thread_id: ThreadId,
        key: ThreadKey,
        encryptions_so_far: u64,
        current: bool,
    ) -> Result<(), KeyError> {
        let key_id = key.id();
        match self.keys.iter_mut().find(|entry| entry.key.id() == key_id) {
            Some(entry) => {
                if entry.thread_id != thread_id || !entry.key.same_as(&key) {
                    return Err(KeyError::KeyIdConflict(key_id));
                }
                entry.encryptions = entry.encryptions.max(encryptions_so_far);
            }
            None => {
                let cipher = key.cipher();
                self.keys.push(RingEntry { thread_id, key, cipher, encryptions: encryptions_so_far });
            }
        }
        if current {
            self.current.retain(|(thread, _)| *thread != thread_id);
            self.current.push((thread_id, key_id));
        }
        Ok(())
    }

    /// Forgets every key of a thread (for example after leaving it). Its
    /// envelopes no longer open on this device.
    pub fn remove_thread(&mut self, thread_id: ThreadId) {
        self.current.retain(|(thread, _)| *thread != thread_id);
        self.keys.retain(|entry| entry.thread_id != thread_id);
    }

    /// The id of the key new seals in `thread_id` use, if there is one.
    pub fn current_key_id(&self, thread_id: ThreadId) -> Option<KeyId> {
        self.current.iter().find(|(thread, _)| *thread == thread_id).map(|(_, key_id)| *key_id)
    }

    /// The key new seals in `thread_id` use (to put in an invite).
    pub fn current_key(&self, thread_id: ThreadId) -> Option<&ThreadKey> {
        self.entry(self.current_key_id(thread_id)?).map(|entry| &entry.key)
    }

    /// A key by id, with the thread it belongs to.
    pub fn key(&self, key_id: KeyId) -> Option<(ThreadId, &ThreadKey)> {
        self.entry(key_id).map(|entry| (entry.thread_id, &entry.key))
    }

    /// The ids of every key of `thread_id`, oldest insert first.
    pub fn key_ids(&self, thread_id: ThreadId) -> Vec<KeyId> {
        self.keys.iter().filter(|entry| entry.thread_id == thread_id).map(|entry| entry.key.id()).collect()
    }

    /// Whether the ring has any key (current or not) for `thread_id`.
    pub fn has_thread(&self, thread_id: ThreadId) -> bool {
        self.keys.iter().any(|entry| entry.thread_id == thread_id)
    }

    /// How many times this device sealed with `key_id` (0 if unknown).
    pub fn encryption_count(&self, key_id: KeyId) -> u64 {
        self.entry(key_id).map_or(0, |entry| entry.encryptions)
    }

    /// Whether the current key of `thread_id` has sealed [`ROTATE_AFTER`]
    /// times or more, so the engine should make a new key and insert it as
    /// current. False for a thread without a current key: there is nothing
    /// to rotate (see [`KeyRing::has_thread`]).
    pub fn needs_rotation(&self, thread_id: ThreadId) -> bool {
        self.current_key_id(thread_id)
            .and_then(|key_id| self.entry(key_id))
            .is_some_and(|entry| entry.encryptions >= ROTATE_AFTER)
    }

    /// Counts one seal with the current key of `thread_id` and hands out its
    /// cipher. The count goes up before sealing, so a failed seal never lets
    /// a nonce go uncounted.
    pub(crate) fn reserve_seal(&mut self, thread_id: ThreadId) -> Result<(KeyId, &Aes256Gcm), ReserveError> {
        let key_id = self.current_key_id(thread_id).ok_or(ReserveError::NoCurrentKey)?;
        let entry =
            self.keys.iter_mut().find(|entry| entry.key.id() == key_id).ok_or(ReserveError::NoCurrentKey)?;
        if entry.encryptions >= MAX_ENCRYPTIONS_PER_KEY {
            return Err(ReserveError::Exhausted(key_id));
        }
        entry.encryptions += 1;
        Ok((key_id, &entry.cipher))
    }

    /// The cipher of `key_id`, only if that key belongs to `thread_id`.
    pub(crate) fn cipher_for(&self, thread_id: ThreadId, key_id: KeyId) -> Option<&Aes256Gcm> {
        self.entry(key_id).filter(|entry| entry.thread_id == thread_id).map(|entry| &entry.cipher)
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids and counts only: enough to debug rotation, nothing secret.
        let mut map = f.debug_map();
        for entry in &self.keys {
            let key_id = entry.key.id();
            let current = self.current_key_id(entry.thread_id) == Some(key_id);
            map.entry(
                &key_id,
                &format_args!(
                    "{{thread: {}, encryptions: {}, current: {}}}",
                    entry.thread_id, entry.encryptions, current
                ),
            );
        }
        map.finish()
    }
}

/// Version byte of the invite format written by [`Invite::encode`].
pub const INVITE_VERSION: u8 = 1;

/// Bytes of an invite before the optional server invite:
/// version, thread id, key id, key, flag.
const INVITE_FIXED_LEN: usize = 1 + 16 + KEY_ID_LEN + KEY_LEN + 1;

/// What an invite link carries: the thread, its key, and optionally a token
/// the server wants before it lets the new member in.
///
/// Encoded (version 1) as unpadded base64url of
/// `version (1) ‖ thread_id (16) ‖ key_id (8) ‖ key (32) ‖ flag (1) ‖ rest`,
/// where flag 0 means no server invite and no rest, and flag 1 means the rest
/// is the server invite in UTF-8. Ending with the only variable-length part
/// needs no length field, so every invite encodes. The encoding is canonical:
/// [`Invite::decode`] accepts exactly the strings [`Invite::encode`] makes.
///
/// The encoded string *is* the thread key: put it only in a URL fragment,
/// never in a query string, a log or an analytics event.
#[derive(Clone)]
pub struct Invite {
    /// The thread to join.
    pub thread_id: ThreadId,
    /// Its current key.
    pub key: ThreadKey,
    /// An opaque token for the server's invite endpoint, if it needs one.
    pub server_invite: Option<String>,
}

impl Invite {
    /// The invite as URL-fragment-safe text (base64url, no padding).
    pub fn encode(&self) -> String {
        let extra = self.server_invite.as_ref().map_or(0, String::len);
        // Zeroizing: the buffer holds the key in clear.
        let mut bytes = Zeroizing::new(Vec::with_capacity(INVITE_FIXED_LEN + extra));
        bytes.push(INVITE_VERSION);
        bytes.extend_from_slice(&self.thread_id.0.to_bytes());
        bytes.extend_from_slice(&self.key.id().to_bytes());
        bytes.extend_from_slice(self.key.secret_bytes());
        match &self.server_invite {
            None => bytes.push(0),
            Some(token) => {
                bytes.push(1);
                bytes.extend_from_slice(token.as_bytes());
            }
        }
        base64url::encode(&bytes)
    }

    /// Parses text made by [`Invite::encode`]. Never panics; every way the
    /// text can be wrong has its own [`KeyError`].
    pub fn decode(code: &str) -> Result<Invite, KeyError> {
        let bytes = Zeroizing::new(base64url::decode(code).map_err(|_| KeyError::InviteEncoding)?);
        // The version decides the layout, so it is checked before lengths:
        // a newer invite says "unknown version", not "truncated".
        let (&version, rest) = bytes.split_first().ok_or(KeyError::InviteTruncated)?;
        if version != INVITE_VERSION {
            return Err(KeyError::InviteVersion(version));
        }
        if bytes.len() < INVITE_FIXED_LEN {
            return Err(KeyError::InviteTruncated);
        }
        let (thread, rest) = rest.split_at(16);
        let (key_id, rest) = rest.split_at(KEY_ID_LEN);
        let (secret, rest) = rest.split_at(KEY_LEN);
        let (&flag, rest) = rest.split_first().ok_or(KeyError::InviteTruncated)?;

        let mut thread_bytes = [0u8; 16];
        thread_bytes.copy_from_slice(thread);
        let thread_id =
            ThreadId(id_from_bytes(thread_bytes).ok_or(KeyError::InviteMalformed("bad thread id"))?);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(key_id);
        let mut key = ThreadKey::from_parts(KeyId(id), [0u8; KEY_LEN]);
        key.secret.copy_from_slice(secret);
        let server_invite = match flag {
            0 if rest.is_empty() => None,
            0 => return Err(KeyError::InviteMalformed("unexpected bytes after the key")),
            1 => Some(
                std::str::from_utf8(rest)
                    .map_err(|_| KeyError::InviteMalformed("server invite is not UTF-8"))?
                    .to_owned(),
            ),
            _ => return Err(KeyError::InviteMalformed("unknown flag")),
        };
        Ok(Invite { thread_id, key, server_invite })
    }

    /// The fragment of an invite link, `#k=<code>`.
    pub fn to_fragment(&self) -> String {
        format!("#k={}", self.encode())
    }

    /// Parses a link fragment (`#k=<code>`, with or without `#`), or a bare
    /// code.
    pub fn from_fragment(fragment: &str) -> Result<Invite, KeyError> {
        let code = fragment.trim();
        let code = code.strip_prefix('#').unwrap_or(code);
        let code = code.strip_prefix("k=").unwrap_or(code);
        Invite::decode(code)
    }
}

impl fmt::Debug for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invite")
            .field("thread_id", &self.thread_id)
            .field("key", &self.key)
            .field("server_invite", &self.server_invite.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Reads 16 big-endian bytes as an id.
fn id_from_bytes(bytes: [u8; 16]) -> Option<Id> {
    // `Id` has no public from-bytes constructor (its field is private to
    // `model`); its canonical text is the other exact representation.
    let hex = format!("{:032x}", u128::from_be_bytes(bytes));
    let text = format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..]);
    text.parse().ok()
}

/// Label that starts every KEK AAD; the `v1` ties it to [`WRAP_VERSION`].
pub const KEK_AAD_LABEL: &[u8; 15] = b"dovecote/kek/v1";
/// Length of [`kek_aad`]'s output.
pub const KEK_AAD_LEN: usize = KEK_AAD_LABEL.len() + 16 + KEY_ID_LEN;
/// Version byte of wrapped keys.
pub const WRAP_VERSION: u8 = 1;
/// Length of a wrapped key: `version (1) ‖ nonce (12) ‖ AES-GCM(key) (32 + 16)`.
pub const WRAPPED_KEY_LEN: usize = 1 + NONCE_LEN + KEY_LEN + TAG_LEN;

/// The associated data for wrapping the key `key_id` of `thread_id`:
/// `"dovecote/kek/v1" ‖ thread_id (16) ‖ key_id (8)`.
///
/// Every field has a fixed length, so the concatenation is unambiguous. A
/// wrapped key moved to another thread's or key id's row fails to unwrap.
/// The browser passes these bytes as WebCrypto's `additionalData`.
pub fn kek_aad(thread_id: ThreadId, key_id: KeyId) -> [u8; KEK_AAD_LEN] {
    let mut aad = [0u8; KEK_AAD_LEN];
    let (label, rest) = aad.split_at_mut(KEK_AAD_LABEL.len());
    label.copy_from_slice(KEK_AAD_LABEL);
    let (thread, key) = rest.split_at_mut(16);
    thread.copy_from_slice(&thread_id.0.to_bytes());
    key.copy_from_slice(&key_id.to_bytes());
    aad
}

/// A key-encryption key: AES-256-GCM over thread keys, for storing them.
///
/// Wrapped keys are [`WRAPPED_KEY_LEN`] bytes:
/// `version (1) ‖ nonce (12, random) ‖ ciphertext of the 32 key bytes ‖ tag`,
/// with [`kek_aad`] as associated data. The key id is not inside: the store
/// keeps it next to the wrapped bytes, and the AAD checks that they match.
pub struct Kek {
    cipher: Aes256Gcm,
}

impl Kek {
    /// A fresh random KEK.
    pub fn generate() -> Result<Kek, KeyError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        random_fill(&mut bytes[..]).map_err(KeyError::Random)?;
        Ok(Kek::from_bytes(&bytes))
    }

    /// A KEK from its bytes (the caller zeroizes its copy).
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Kek {
        Kek { cipher: Aes256Gcm::new(bytes.into()) }
    }

    /// Wraps `key`, which belongs to `thread_id`, for storage.
    pub fn wrap(&self, thread_id: ThreadId, key: &ThreadKey) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        random_fill(&mut nonce).map_err(KeyError::Random)?;
        let aad = kek_aad(thread_id, key.id());
        let sealed = self
            .cipher
            .encrypt(&Nonce::<Aes256Gcm>::from(nonce), Payload { msg: key.secret_bytes(), aad: &aad })
            // Only fails for inputs over 2^36 bytes; 32 bytes never are.
            .map_err(|_| KeyError::UnwrapFailed)?;
        let mut wrapped = Vec::with_capacity(WRAPPED_KEY_LEN);
        wrapped.push(WRAP_VERSION);
        wrapped.extend_from_slice(&nonce);
        wrapped.extend_from_slice(&sealed);
        Ok(wrapped)
    }

    /// Unwraps the key `key_id` of `thread_id` from bytes made by
    /// [`Kek::wrap`] (or by the browser's WebCrypto KEK).
    pub fn unwrap(&self, thread_id: ThreadId, key_id: KeyId, wrapped: &[u8]) -> Result<ThreadKey, KeyError> {
        let (&version, rest) = wrapped.split_first().ok_or(KeyError::WrappedTruncated)?;
        if version != WRAP_VERSION {
            return Err(KeyError::WrappedVersion(version));
        }
        if wrapped.len() < WRAPPED_KEY_LEN {
            return Err(KeyError::WrappedTruncated);
        }
        if wrapped.len() > WRAPPED_KEY_LEN {
            // Extra bytes would be authenticated away anyway; saying so is
            // clearer than "does not unwrap".
            return Err(KeyError::UnwrapFailed);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| KeyError::WrappedTruncated)?;
        let aad = kek_aad(thread_id, key_id);
        let secret = Zeroizing::new(
            self.cipher
                .decrypt(&Nonce::<Aes256Gcm>::from(nonce), Payload { msg: sealed, aad: &aad })
                .map_err(|_| KeyError::UnwrapFailed)?,
        );
        let mut key = ThreadKey::from_parts(key_id, [0u8; KEY_LEN]);
        key.secret.copy_from_slice(&secret);
        Ok(key)
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}
