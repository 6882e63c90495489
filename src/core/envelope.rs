//! Sealed payloads: AES-256-GCM envelopes (DESIGN.md §4).
//!
//! Message bodies and thread titles are stored and synced only as
//! [`Envelope`]s. Envelope v1 is
//!
//! ```text
//! version (1 byte = 1) ‖ key_id (8) ‖ nonce (12, random) ‖ ciphertext ‖ tag (16)
//! ```
//!
//! sealed with the thread key named by `key_id` and with an [`Aad`] that
//! binds where the payload belongs (thread, message, sender, kind). Opening
//! fails closed with a typed [`OpenError`]: the caller shows the record as
//! undecryptable, never as garbage. Key bookkeeping (which key is current,
//! how often it sealed) lives in [`crate::core::keys::KeyRing`]; this module
//! owns the byte format, so `seal` and `open` are here.

use aes_gcm::aead::{Aead, AeadInOut, Nonce, Payload};
use aes_gcm::Aes256Gcm;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::base64url;
use crate::core::keys::{random_fill, KeyId, KeyRing, ReserveError, KEY_ID_LEN, NONCE_LEN, TAG_LEN};
use crate::core::model::{Id, MessageId, ThreadId, UserId};

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
        s.serialize_str(&base64url::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64url::decode(&s)
            .map(Envelope)
            .map_err(|e| serde::de::Error::custom(format!("envelope is not base64url: {e}")))
    }
}

/// Version byte of the envelope format written by [`KeyRing::seal`].
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes before the ciphertext: version (1) ‖ key id (8) ‖ nonce (12).
pub const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// The shortest well-formed envelope: a header and a tag, sealing nothing.
pub const MIN_ENVELOPE_LEN: usize = HEADER_LEN + TAG_LEN;
/// The first AAD field. Its `v1` names the AAD layout: a future envelope
/// version with another layout changes the label, so an AAD of one version
/// can never be read as the other's.
pub const AAD_LABEL: &[u8] = b"dovecote/v1";

/// What a sealed payload is, bound into its AAD: a title cannot be shown as
/// a message, nor an edit's text as the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SealKind {
    /// A thread's title (the AAD's message id is the thread id).
    ThreadTitle,
    /// A message body as first sent.
    Send,
    /// A message body as edited.
    Edit,
}

impl SealKind {
    /// The byte that stands for this kind in the AAD. Fixed forever: changing
    /// one makes every stored envelope of that kind unopenable.
    pub fn to_byte(self) -> u8 {
        match self {
            SealKind::ThreadTitle => 1,
            SealKind::Send => 2,
            SealKind::Edit => 3,
        }
    }
}

/// Where a sealed payload belongs. It opens only with the same `Aad` it was
/// sealed with, so the server (or anyone with write access to the store)
/// cannot move a ciphertext to another message, thread, sender or kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aad<'a> {
    /// The thread.
    pub thread_id: ThreadId,
    /// The message; for [`SealKind::ThreadTitle`], the thread's own id.
    pub message_id: Id,
    /// Who sealed it.
    pub sender: &'a UserId,
    /// What it is.
    pub kind: SealKind,
}

impl<'a> Aad<'a> {
    /// The AAD of a thread title set by `sender`.
    pub fn thread_title(thread_id: ThreadId, sender: &'a UserId) -> Aad<'a> {
        Aad { thread_id, message_id: thread_id.0, sender, kind: SealKind::ThreadTitle }
    }

    /// The AAD of a message body (`kind` is [`SealKind::Send`] or
    /// [`SealKind::Edit`]).
    pub fn message(
        thread_id: ThreadId,
        message_id: MessageId,
        sender: &'a UserId,
        kind: SealKind,
    ) -> Aad<'a> {
        Aad { thread_id, message_id: message_id.0, sender, kind }
    }

    /// The AAD bytes: `"dovecote/v1" ‖ thread_id ‖ message_id ‖ sender ‖
    /// kind`, each field preceded by its length as a big-endian u64.
    ///
    /// Length prefixes make the encoding injective: no two different `Aad`s
    /// give the same bytes, whatever the sender's text. u64 because it holds
    /// any `usize`, so no length needs a fallible conversion.
    pub fn to_bytes(&self) -> Vec<u8> {
        let sender = self.sender.as_str().as_bytes();
        let fields: [&[u8]; 5] = [
            AAD_LABEL,
            &self.thread_id.0.to_bytes(),
            &self.message_id.to_bytes(),
            sender,
            &[self.kind.to_byte()],
        ];
        let mut aad = Vec::with_capacity(fields.iter().map(|f| 8 + f.len()).sum());
        for field in fields {
            aad.extend_from_slice(&(field.len() as u64).to_be_bytes());
            aad.extend_from_slice(field);
        }
        aad
    }
}

impl Envelope {
    /// The id of the key that sealed this envelope, read from its header
    /// without opening it: to look up (and unwrap) the key lazily, or to name
    /// the missing key when reporting an envelope as undecryptable.
    pub fn key_id(&self) -> Result<KeyId, OpenError> {
        parse(&self.0).map(|parts| parts.key_id)
    }

    /// Whether these bytes can be an envelope at all (long enough for their
    /// version's header and tag). A pulled change whose envelope cannot is
    /// set aside; one of an unknown version is kept (a newer build may open
    /// it) and shows as undecryptable.
    pub fn check_framing(&self) -> Result<(), OpenError> {
        match parse(&self.0) {
            Err(OpenError::Truncated) => Err(OpenError::Truncated),
            _ => Ok(()),
        }
    }
}

/// An envelope split into its parts (not yet authenticated).
struct Parts<'e> {
    key_id: KeyId,
    nonce: [u8; NONCE_LEN],
    sealed: &'e [u8],
}

fn parse(bytes: &[u8]) -> Result<Parts<'_>, OpenError> {
    // The version comes first and decides the layout, so it is checked
    // before the length: an envelope from a newer version says so, rather
    // than "truncated".
    let (&version, rest) = bytes.split_first().ok_or(OpenError::Truncated)?;
    if version != ENVELOPE_VERSION {
        return Err(OpenError::UnknownVersion(version));
    }
    if bytes.len() < MIN_ENVELOPE_LEN {
        return Err(OpenError::Truncated);
    }
    let (key_id, rest) = rest.split_at(KEY_ID_LEN);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    Ok(Parts {
        key_id: KeyId(key_id.try_into().map_err(|_| OpenError::Truncated)?),
        nonce: nonce.try_into().map_err(|_| OpenError::Truncated)?,
        sealed,
    })
}

/// Why [`KeyRing::seal`] made no envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The ring has no current key for the thread.
    #[error("no key to encrypt for this thread")]
    NoCurrentKey,
    /// The current key sealed
    /// [`MAX_ENCRYPTIONS_PER_KEY`](crate::core::keys::MAX_ENCRYPTIONS_PER_KEY) times; the thread
    /// needs a new key (see [`KeyRing::needs_rotation`]).
    #[error("key {0} is used up; rotate the thread key")]
    KeyExhausted(KeyId),
    /// The platform's secure random source failed.
    #[error("secure random numbers are unavailable: {0}")]
    Random(getrandom::Error),
    /// A payload beyond AES-GCM's limit (64 GiB); never a chat message.
    #[error("payload too large to encrypt")]
    TooLarge,
}

impl SealError {
    /// A stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            SealError::NoCurrentKey => "no_current_key",
            SealError::KeyExhausted(_) => "key_exhausted",
            SealError::Random(_) => "random_unavailable",
            SealError::TooLarge => "too_large",
        }
    }
}

/// Why an envelope did not open. The record is then shown as undecryptable
/// with this reason; there is no plaintext to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Too short to hold a header and a tag.
    #[error("encrypted data is truncated")]
    Truncated,
    /// Made by a newer (or unknown) version of dovecote.
    #[error("encrypted data has unknown version {0}")]
    UnknownVersion(u8),
    /// Sealed with a key this device does not hold for this thread. A key
    /// the ring holds for *another* thread gives this too, without trying
    /// it: keys are never shared between threads.
    #[error("the key for this message is not on this device")]
    KeyMissing,
    /// Authentication failed: damaged bytes, the wrong key under a known id,
    /// or an envelope moved to another message, thread, sender or kind.
    #[error("encrypted data was altered or does not belong here")]
    Tampered,
}

impl OpenError {
    /// A stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            OpenError::Truncated => "truncated",
            OpenError::UnknownVersion(_) => "unknown_version",
            OpenError::KeyMissing => "key_missing",
            OpenError::Tampered => "tampered",
        }
    }
}

impl KeyRing {
    /// Seals `plaintext` with the current key of `aad.thread_id` and a fresh
    /// random nonce, and counts the seal against that key.
    pub fn seal(&mut self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Envelope, SealError> {
        let (key_id, cipher) = self.reserve_seal(aad.thread_id).map_err(|e| match e {
            ReserveError::NoCurrentKey => SealError::NoCurrentKey,
            ReserveError::Exhausted(key_id) => SealError::KeyExhausted(key_id),
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        random_fill(&mut nonce).map_err(SealError::Random)?;

        let mut bytes = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
        bytes.push(ENVELOPE_VERSION);
        bytes.extend_from_slice(&key_id.to_bytes());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(plaintext);
        // Encrypted in place: the plaintext is overwritten in the one buffer
        // rather than copied into a second one.
        let tag = cipher
            .encrypt_inout_detached(
                &Nonce::<Aes256Gcm>::from(nonce),
                &aad.to_bytes(),
                (&mut bytes[HEADER_LEN..]).into(),
            )
            .map_err(|_| SealError::TooLarge)?;
        bytes.extend_from_slice(&tag);
        Ok(Envelope(bytes))
    }

    /// Opens `envelope` if it was sealed for exactly `aad` with a key this
    /// ring holds for `aad.thread_id`. Never panics, whatever the bytes.
    ///
    /// The plaintext is returned as a plain `Vec`: it is shown to the user
    /// and handed to JS as a string, so zeroizing this one copy would promise
    /// more than it delivers. Key bytes, by contrast, never leave Rust.
    pub fn open(&self, aad: &Aad<'_>, envelope: &Envelope) -> Result<Vec<u8>, OpenError> {
        let parts = parse(&envelope.0)?;
        let cipher = self.cipher_for(aad.thread_id, parts.key_id).ok_or(OpenError::KeyMissing)?;
        // aes-gcm checks the tag before decrypting, so nothing unauthenticated
        // is ever returned.
        cipher
            .decrypt(
                &Nonce::<Aes256Gcm>::from(parts.nonce),
                Payload { msg: parts.sealed, aad: &aad.to_bytes() },
            )
            .map_err(|_| OpenError::Tampered)
    }
}
