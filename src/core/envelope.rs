//! Sealed payloads: AES-256-GCM envelopes (DESIGN.md §4, docs/security.md).
//!
//! Message bodies and thread titles are stored and synced only as
//! [`Envelope`]s. Envelope v2, the one [`KeyRing::seal`] writes, is
//!
//! ```text
//! header = version (1 byte = 2) ‖ key_id (8) ‖ nonce (12, random)
//! envelope = header ‖ AES-GCM(inner) ‖ tag (16)
//! inner = flags (1) ‖ content length (u32 BE) ‖ content ‖ zeros to the bucket
//! ```
//!
//! sealed with the thread key named by `key_id` and with an AAD that binds
//! the whole header and where the payload belongs ([`Aad`]: thread, message,
//! sender, kind). Content above [`COMPRESS_ABOVE`] is LZ4-compressed when
//! that makes it smaller (flag [`FLAG_LZ4`]; its first 4 bytes are the
//! original length, at most [`MAX_OPENED_LEN`], checked before anything is
//! allocated), and `inner` is padded with zeros to a [`padded_len`] bucket,
//! so the server sees a bucket, not the exact size. v1 envelopes
//! (`version 1 ‖ key_id ‖ nonce ‖ ciphertext ‖ tag`, no header in the AAD,
//! no padding) still open. Opening fails closed with a typed [`OpenError`]:
//! the caller shows the record as undecryptable, never as garbage. Key
//! bookkeeping lives in [`crate::core::keys::KeyRing`]; this module owns the
//! byte format, so `seal` and `open` are here.

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
pub const ENVELOPE_VERSION: u8 = 2;
/// The first envelope format, still opened (written until release 0.1).
pub const ENVELOPE_V1: u8 = 1;
/// Bytes before the ciphertext: version (1) ‖ key id (8) ‖ nonce (12), the
/// same in v1 and v2.
pub const HEADER_LEN: usize = 1 + KEY_ID_LEN + NONCE_LEN;
/// The shortest well-formed envelope: a header and a tag, sealing nothing.
pub const MIN_ENVELOPE_LEN: usize = HEADER_LEN + TAG_LEN;
/// The first AAD field of a v1 envelope. The label names the AAD layout, so
/// an AAD of one version can never be read as another's.
pub const AAD_LABEL: &[u8] = b"dovecote/v1";
/// The first AAD field of a v2 envelope; the header follows it.
pub const AAD_LABEL_V2: &[u8] = b"dovecote/v2";
/// Content longer than this is compressed if that makes it smaller (chat
/// text under 10 KiB gains little and costs time).
pub const COMPRESS_ABOVE: usize = 10 * 1024;
/// The most bytes an envelope may open to: the largest message body. A
/// compressed envelope declaring more is refused before anything is
/// allocated (a decompression bomb).
pub const MAX_OPENED_LEN: usize = crate::core::model::MAX_BODY_BYTES;
/// `inner` flag: the content is an LZ4 block after its original length.
pub const FLAG_LZ4: u8 = 1;
/// `inner` before the content: flags (1) ‖ content length (4).
pub const INNER_PREFIX_LEN: usize = 1 + 4;
/// The smallest padded `inner`: short messages ("ok", "yes") share one size.
pub const MIN_PADDED_LEN: usize = 32;

/// The bucket `inner` of `len` bytes is padded to: PADMÉ (Nikitin et al.,
/// "Reducing Metadata Leakage from Encrypted Files and Communication with
/// PURBs", 2019), at least [`MIN_PADDED_LEN`]. A bucket keeps only the top
/// ~log2(log2(len)) bits of the length, so it leaks O(log log len) bits and
/// costs at most 12% (at most 6.25% from 1 KiB, 3.2% from 64 KiB).
pub fn padded_len(len: usize) -> usize {
    let len = len.max(MIN_PADDED_LEN);
    let exponent = usize::BITS - 1 - len.leading_zeros(); // floor(log2 len)
    let exponent_bits = u32::BITS - exponent.leading_zeros(); // floor(log2 exponent) + 1
    let mask = (1usize << (exponent - exponent_bits)) - 1;
    (len + mask) & !mask
}

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

    /// The v1 AAD bytes: `"dovecote/v1" ‖ thread_id ‖ message_id ‖ sender ‖
    /// kind`, each field preceded by its length as a big-endian u64.
    ///
    /// Length prefixes make the encoding injective: no two different `Aad`s
    /// give the same bytes, whatever the sender's text. u64 because it holds
    /// any `usize`, so no length needs a fallible conversion.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.encode(AAD_LABEL, None)
    }

    /// The v2 AAD bytes: `"dovecote/v2" ‖ header ‖ thread_id ‖ message_id ‖
    /// sender ‖ kind`, length-prefixed like [`Aad::to_bytes`]. The header
    /// (version, key id, nonce) is authenticated as a whole.
    pub fn to_bytes_v2(&self, header: &[u8]) -> Vec<u8> {
        self.encode(AAD_LABEL_V2, Some(header))
    }

    fn encode(&self, label: &[u8], header: Option<&[u8]>) -> Vec<u8> {
        let sender = self.sender.as_str().as_bytes();
        let thread_id = self.thread_id.0.to_bytes();
        let message_id = self.message_id.to_bytes();
        let fields = [
            Some(label),
            header,
            Some(&thread_id),
            Some(&message_id),
            Some(sender),
            Some(&[self.kind.to_byte()]),
        ];
        let mut aad = Vec::with_capacity(fields.iter().flatten().map(|f| 8 + f.len()).sum());
        for field in fields.into_iter().flatten() {
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
    version: u8,
    header: &'e [u8],
    key_id: KeyId,
    nonce: [u8; NONCE_LEN],
    sealed: &'e [u8],
}

fn parse(bytes: &[u8]) -> Result<Parts<'_>, OpenError> {
    // The version comes first and decides the layout, so it is checked
    // before the length: an envelope from a newer version says so, rather
    // than "truncated".
    let (&version, rest) = bytes.split_first().ok_or(OpenError::Truncated)?;
    if version != ENVELOPE_VERSION && version != ENVELOPE_V1 {
        return Err(OpenError::UnknownVersion(version));
    }
    if bytes.len() < MIN_ENVELOPE_LEN {
        return Err(OpenError::Truncated);
    }
    let (key_id, rest) = rest.split_at(KEY_ID_LEN);
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    Ok(Parts {
        version,
        header: &bytes[..HEADER_LEN],
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
    #[error("secure random numbers are unavailable")]
    Random(getrandom::Error),
    /// A payload over [`MAX_OPENED_LEN`]: no member could open it.
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
    /// Authentic, but its content is not well formed: bad padding or
    /// compression, unknown flags (a member's broken or newer client).
    #[error("encrypted data is authentic but malformed")]
    Malformed,
    /// Its content would open to more than [`MAX_OPENED_LEN`] bytes.
    #[error("encrypted data would open to more than {MAX_OPENED_LEN} bytes")]
    TooLarge,
}

impl OpenError {
    /// A stable machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            OpenError::Truncated => "truncated",
            OpenError::UnknownVersion(_) => "unknown_version",
            OpenError::KeyMissing => "key_missing",
            OpenError::Tampered => "tampered",
            OpenError::Malformed => "malformed",
            OpenError::TooLarge => "too_large",
        }
    }
}

impl KeyRing {
    /// Seals `plaintext` as a v2 envelope with the current key of
    /// `aad.thread_id` and a fresh random nonce, and counts the seal against
    /// that key.
    pub fn seal(&mut self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Envelope, SealError> {
        if plaintext.len() > MAX_OPENED_LEN {
            return Err(SealError::TooLarge);
        }
        let (key_id, cipher) = self.reserve_seal(aad.thread_id).map_err(|e| match e {
            ReserveError::NoCurrentKey => SealError::NoCurrentKey,
            ReserveError::Exhausted(key_id) => SealError::KeyExhausted(key_id),
        })?;
        let mut nonce = [0u8; NONCE_LEN];
        random_fill(&mut nonce).map_err(SealError::Random)?;

        let mut bytes =
            Vec::with_capacity(HEADER_LEN + padded_len(INNER_PREFIX_LEN + plaintext.len()) + TAG_LEN);
        bytes.push(ENVELOPE_VERSION);
        bytes.extend_from_slice(&key_id.to_bytes());
        bytes.extend_from_slice(&nonce);
        let content = write_inner(&mut bytes, plaintext);
        let aad = aad.to_bytes_v2(&bytes[..HEADER_LEN]);
        // Encrypted in place: the plaintext is overwritten in the one buffer
        // rather than copied into a second one.
        let tag = cipher
            .encrypt_inout_detached(&Nonce::<Aes256Gcm>::from(nonce), &aad, (&mut bytes[HEADER_LEN..]).into())
            .map_err(|_| SealError::TooLarge)?;
        bytes.extend_from_slice(&tag);
        self.sealed.plaintext += plaintext.len() as u64;
        self.sealed.content += content as u64;
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
        let aad_bytes = match parts.version {
            ENVELOPE_V1 => aad.to_bytes(),
            _ => aad.to_bytes_v2(parts.header),
        };
        // aes-gcm checks the tag before decrypting, so nothing unauthenticated
        // is ever returned.
        let inner = cipher
            .decrypt(&Nonce::<Aes256Gcm>::from(parts.nonce), Payload { msg: parts.sealed, aad: &aad_bytes })
            .map_err(|_| OpenError::Tampered)?;
        match parts.version {
            ENVELOPE_V1 => Ok(inner),
            _ => read_inner(&inner),
        }
    }
}

/// Appends `inner` for `plaintext`: flags ‖ length ‖ content ‖ zero padding.
/// Returns the content's length.
fn write_inner(out: &mut Vec<u8>, plaintext: &[u8]) -> usize {
    let start = out.len();
    let compressed = (plaintext.len() > COMPRESS_ABOVE).then(|| compress(plaintext)).flatten();
    let (flags, content) = match &compressed {
        Some(c) => (FLAG_LZ4, c.as_slice()),
        None => (0, plaintext),
    };
    out.push(flags);
    // Fits: content is at most MAX_OPENED_LEN (+ 4) bytes.
    out.extend_from_slice(&(content.len() as u32).to_be_bytes());
    out.extend_from_slice(content);
    out.resize(start + padded_len(INNER_PREFIX_LEN + content.len()), 0);
    content.len()
}

/// `plaintext` as original length (u32 BE) ‖ LZ4 block, if that is smaller.
fn compress(plaintext: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0; 4 + lz4_flex::block::get_maximum_output_size(plaintext.len())];
    out[..4].copy_from_slice(&(plaintext.len() as u32).to_be_bytes());
    let len = lz4_flex::block::compress_into(plaintext, &mut out[4..]).ok()?;
    out.truncate(4 + len);
    (out.len() < plaintext.len()).then_some(out)
}

/// The plaintext of a v2 `inner`; every length is checked before use.
fn read_inner(inner: &[u8]) -> Result<Vec<u8>, OpenError> {
    let (&flags, rest) = inner.split_first().ok_or(OpenError::Malformed)?;
    let (len, rest) = split_u32(rest)?;
    let content = rest.get(..len).ok_or(OpenError::Malformed)?;
    // The padding is zeros and ends at the bucket the sealer must use, so
    // a v2 envelope has one encoding: nothing can hide in it.
    if inner.len() != padded_len(INNER_PREFIX_LEN + len) || rest[len..].iter().any(|&b| b != 0) {
        return Err(OpenError::Malformed);
    }
    match flags {
        0 if len > MAX_OPENED_LEN => Err(OpenError::TooLarge),
        0 => Ok(content.to_vec()),
        FLAG_LZ4 => {
            let (original_len, block) = split_u32(content)?;
            if original_len > MAX_OPENED_LEN {
                return Err(OpenError::TooLarge);
            }
            let mut out = vec![0; original_len];
            match lz4_flex::block::decompress_into(block, &mut out) {
                Ok(n) if n == original_len => Ok(out),
                _ => Err(OpenError::Malformed),
            }
        }
        _ => Err(OpenError::Malformed),
    }
}

fn split_u32(bytes: &[u8]) -> Result<(usize, &[u8]), OpenError> {
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or(OpenError::Malformed)?;
    Ok((u32::from_be_bytes(*len) as usize, rest))
}
