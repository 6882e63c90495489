//! The data model shared by every layer: ids, threads, messages, their
//! statuses and the outbox's mutations (DESIGN.md §2).
//!
//! Records here are what the store keeps. Message bodies and thread titles
//! exist only as sealed [`Envelope`]s in records; plaintext lives in the
//! JS-facing views built by the engine.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::envelope::Envelope;
use crate::core::sync::MutationBody;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// Largest message body, in bytes of UTF-8.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest thread title, in bytes of UTF-8.
pub const MAX_TITLE_BYTES: usize = 1024;
/// Largest number of members named when a thread is created.
pub const MAX_MEMBERS: usize = 256;

/// A 128-bit, time-ordered id in the UUIDv7 layout.
///
/// The first 48 bits are the creation time in milliseconds, so ids sort by
/// creation time as numbers and as their canonical strings; the rest is
/// random. Ids are made on the client and never change.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(u128);

impl Id {
    /// Builds an id from a creation time and 10 random bytes.
    pub fn from_parts(created_at: Millis, random: [u8; 10]) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&(created_at & 0xffff_ffff_ffff).to_be_bytes()[2..]);
        bytes[6..].copy_from_slice(&random);
        bytes[6] = 0x70 | (bytes[6] & 0x0f); // version 7
        bytes[8] = 0x80 | (bytes[8] & 0x3f); // RFC 4122 variant
        Id(u128::from_be_bytes(bytes))
    }

    /// The creation time encoded in the id.
    pub fn created_at(self) -> Millis {
        (self.0 >> 80) as u64
    }

    /// The id from 16 big-endian bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Id(u128::from_be_bytes(bytes))
    }

    /// The id as 16 big-endian bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

/// Hands out ids that strictly increase, even within one millisecond or when
/// the clock steps back (the "monotonic random" method of RFC 9562 §6.2), so
/// that one client's messages sort in the order they were written.
#[derive(Debug, Default)]
pub struct IdGenerator {
    last: std::cell::Cell<u128>,
}

impl IdGenerator {
    /// The next id for time `now` with 10 fresh random bytes.
    pub fn next(&self, now: Millis, random: [u8; 10]) -> Id {
        let candidate = Id::from_parts(now, random).0;
        let last = self.last.get();
        let id = if candidate > last {
            candidate
        } else {
            // Same or earlier millisecond: step the random tail of the last id.
            last + 1
        };
        self.last.set(id);
        Id(id)
    }
}

/// A string that is not an id in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an id (expected 8-4-4-4-12 hex digits): \"{0}\"")]
pub struct InvalidId(pub String);

impl FromStr for Id {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, InvalidId> {
        let invalid = || InvalidId(s.chars().take(64).collect());
        let b = s.as_bytes();
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return Err(invalid());
        }
        let hex: String = s.chars().filter(|&c| c != '-').collect();
        if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        u128::from_str_radix(&hex, 16).map(Id).map_err(|_| invalid())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(f, "{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Id);

        impl $name {
            /// Builds an id from a creation time and 10 random bytes.
            pub fn from_parts(created_at: Millis, random: [u8; 10]) -> Self {
                Self(Id::from_parts(created_at, random))
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                s.parse().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// Identifies a thread.
    ThreadId
);
id_type!(
    /// Identifies a message.
    MessageId
);
id_type!(
    /// Identifies one installation of the SDK (one IndexedDB database).
    DeviceId
);

/// Identifies a user; issued by the server's sign-in, opaque to the client.
/// Deserializing checks it like [`UserId::parse`], so a malformed id in JSON
/// or on disk is refused at the edge.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UserId(pub String);

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        UserId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Bidi controls, zero-width and other default-ignorable or blank-rendering
/// characters (Unicode's Default_Ignorable_Code_Point, plus separators and
/// fillers that render blank). Kept as ranges: no Unicode tables in the wasm.
fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x2028..=0x202E | 0x205F..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFFB | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

impl UserId {
    /// Largest user id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Checks that `s` is a usable user id: 1 to 128 bytes, no control
    /// characters, and nothing that renders as nothing or reorders text (bidi
    /// controls, zero-width and other invisible characters), so that two ids
    /// that look the same are the same id.
    pub fn parse(s: &str) -> Result<Self, InvalidInput> {
        if s.is_empty() || s.len() > Self::MAX_LEN || s.chars().any(|c| c.is_control() || is_invisible(c)) {
            return Err(InvalidInput::UserId);
        }
        Ok(UserId(s.to_owned()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({:?})", self.0)
    }
}

/// Why a caller's input was refused. Nothing is written when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidInput {
    /// A message body with nothing but white space.
    #[error("message text is empty")]
    EmptyBody,
    /// A message body over [`MAX_BODY_BYTES`].
    #[error("message text is {0} bytes, over the limit of {MAX_BODY_BYTES}")]
    BodyTooLarge(usize),
    /// A thread title with nothing but white space.
    #[error("thread title is empty")]
    EmptyTitle,
    /// A thread title over [`MAX_TITLE_BYTES`].
    #[error("thread title is {0} bytes, over the limit of {MAX_TITLE_BYTES}")]
    TitleTooLarge(usize),
    /// More members than [`MAX_MEMBERS`].
    #[error("{0} members, over the limit of {MAX_MEMBERS}")]
    TooManyMembers(usize),
    /// A user id that is empty, too long, or has control or invisible characters.
    #[error("user ids must be 1 to 128 bytes, no control or invisible characters")]
    UserId,
    /// A string that is not an id.
    #[error(transparent)]
    Id(#[from] InvalidId),
    /// A server URL that is not an absolute http(s) URL.
    #[error("{0}")]
    ServerUrl(String),
}

/// Checks a message body as the caller gave it; the body is kept as given.
pub fn validate_body(text: &str) -> Result<(), InvalidInput> {
    if text.len() > MAX_BODY_BYTES {
        return Err(InvalidInput::BodyTooLarge(text.len()));
    }
    if text.trim().is_empty() {
        return Err(InvalidInput::EmptyBody);
    }
    Ok(())
}

/// Checks a thread title as the caller gave it.
pub fn validate_title(title: &str) -> Result<(), InvalidInput> {
    if title.len() > MAX_TITLE_BYTES {
        return Err(InvalidInput::TitleTooLarge(title.len()));
    }
    if title.trim().is_empty() {
        return Err(InvalidInput::EmptyTitle);
    }
    Ok(())
}

/// A thread as stored: the title is sealed with the thread key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRecord {
    /// The thread's id.
    pub id: ThreadId,
    /// The title, sealed.
    pub title: Envelope,
    /// Everyone who may read and write the thread, creator included, sorted.
    pub members: Vec<UserId>,
    /// Who created it.
    pub created_by: UserId,
    /// When it was created, by the creator's clock.
    pub created_at: Millis,
}

/// Where a message stands on its way to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MessageStatus {
    /// Stored locally, waiting in the outbox.
    Pending,
    /// In a push request whose answer has not come yet.
    Sending,
    /// Acknowledged by the server; the message has a `seq`.
    Sent,
    /// The server or the network refused it.
    Failed {
        /// Stable machine-readable reason.
        code: String,
        /// Human-readable reason.
        message: String,
        /// Whether the outbox retries on its own.
        recoverable: bool,
    },
    /// The user withdrew it before it was sent.
    Cancelled,
}

/// A message as stored: the body is sealed with the thread key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// The message's id, made by the sender's client.
    pub id: MessageId,
    /// The thread it belongs to.
    pub thread_id: ThreadId,
    /// Who wrote it.
    pub sender: UserId,
    /// The body, sealed; `None` once deleted.
    pub body: Option<Envelope>,
    /// The server's order, once acknowledged.
    pub seq: Option<u64>,
    /// When the sender wrote it, by the sender's clock.
    pub client_ts: Millis,
    /// When the server accepted it.
    pub server_ts: Option<Millis>,
    /// Whether the body was edited.
    pub edited: bool,
    /// Whether the message was deleted (a tombstone).
    pub deleted: bool,
    /// Where it stands.
    pub status: MessageStatus,
    /// Display order within the thread; see [`display_order`].
    pub order: u64,
}

/// Sorts `items` by `key`, stably: an insertion sort. The lists sorted here
/// (members, an outbox read in order, a page of ids) are short or already
/// sorted, where it is as fast as the standard sort and a fraction of its
/// wasm, which is instantiated per element type.
pub fn sort_by_key<T, K: Ord + ?Sized>(items: &mut [T], key: impl Fn(&T) -> &K) {
    for i in 1..items.len() {
        let mut j = i;
        while j > 0 && key(&items[j - 1]) > key(&items[j]) {
            items.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Pending messages sort after every sent one: their order starts here.
/// 2^52: every order stays below 2^53, an exact integer in an f64 (IndexedDB
/// keys and JS numbers are f64).
pub const PENDING_ORDER_BASE: u64 = 1 << 52;

/// The display order of a message: server order once sent, and local order
/// (after all sent messages) while pending. An ack moves a message from the
/// pending range to its seq, which is never above a later pending message.
pub fn display_order(seq: Option<u64>, local_seq: u64) -> u64 {
    match seq {
        Some(seq) => seq,
        None => PENDING_ORDER_BASE + local_seq,
    }
}

/// Where a mutation stands in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MutationState {
    /// Waiting for its turn (or for `next_attempt_at`).
    Queued,
    /// In a push request whose answer has not come yet.
    Sending,
    /// Refused for good; waits for the user to retry or cancel.
    Failed {
        /// Stable machine-readable reason.
        code: String,
        /// Human-readable reason.
        message: String,
    },
}

/// The JSON fields of [`MessageStatus`] and [`MutationState`], read as one
/// flat struct. Their `Deserialize` is written by hand: serde's derive for an
/// internally tagged enum buffers the whole object in its generic `Content`
/// tree first, which costs several KiB of wasm per enum. Same JSON, same
/// errors for well-formed input.
#[derive(Deserialize)]
struct StateFields {
    state: String,
    code: Option<String>,
    message: Option<String>,
    recoverable: Option<bool>,
}

fn required<T, E: serde::de::Error>(value: Option<T>, field: &'static str) -> Result<T, E> {
    value.ok_or_else(|| E::missing_field(field))
}

impl<'de> Deserialize<'de> for MessageStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = StateFields::deserialize(d)?;
        Ok(match f.state.as_str() {
            "pending" => MessageStatus::Pending,
            "sending" => MessageStatus::Sending,
            "sent" => MessageStatus::Sent,
            "failed" => MessageStatus::Failed {
                code: required(f.code, "code")?,
                message: required(f.message, "message")?,
                recoverable: required(f.recoverable, "recoverable")?,
            },
            "cancelled" => MessageStatus::Cancelled,
            other => {
                return Err(serde::de::Error::unknown_variant(
                    other,
                    &["pending", "sending", "sent", "failed", "cancelled"],
                ))
            }
        })
    }
}

impl<'de> Deserialize<'de> for MutationState {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = StateFields::deserialize(d)?;
        Ok(match f.state.as_str() {
            "queued" => MutationState::Queued,
            "sending" => MutationState::Sending,
            "failed" => MutationState::Failed {
                code: required(f.code, "code")?,
                message: required(f.message, "message")?,
            },
            other => return Err(serde::de::Error::unknown_variant(other, &["queued", "sending", "failed"])),
        })
    }
}

/// One row of the outbox: a change made locally, not yet acknowledged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mutation {
    /// Per-device, strictly increasing; assigned by the store when enqueued
    /// (0 before). The server applies each id at most once.
    pub mutation_id: u64,
    /// What to do, as sent to the server.
    pub body: MutationBody,
    /// How many pushes carried it so far.
    pub attempts: u32,
    /// Not to be sent before this time.
    pub next_attempt_at: Millis,
    /// Where it stands.
    pub state: MutationState,
    /// When it was enqueued.
    pub created_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_with_bidi_zero_width_or_invisible_characters_are_refused() {
        for ok in ["alice", "bob@example.com", "Zoë", "李小龙", "a b", "🙂"] {
            assert!(UserId::parse(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "ali\u{202E}ce",
            "\u{2066}alice",
            "alice\u{200F}",
            "ali\u{200B}ce",
            "ali\u{200D}ce",
            "\u{FEFF}alice",
            "ali\u{00AD}ce",
            "alice\u{2060}",
            "\u{3164}",
            "alice\u{E0041}",
            "ali\u{061C}ce",
            "alice\u{2028}",
            "ali\nce",
            "",
        ] {
            assert_eq!(UserId::parse(bad), Err(InvalidInput::UserId), "{bad:?}");
            assert!(serde_json::from_str::<UserId>(&serde_json::to_string(bad).unwrap()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let a = Id::from_parts(1_700_000_000_000, [0xff; 10]);
        let b = Id::from_parts(1_700_000_000_001, [0x00; 10]);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.created_at(), 1_700_000_000_000);
        let s = a.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(&s[14..15], "7");
        assert_eq!(s.parse::<Id>().unwrap(), a);
        assert_eq!(s.to_uppercase().parse::<Id>().unwrap(), a);
    }

    #[test]
    fn generated_ids_strictly_increase_within_a_millisecond_and_backwards_steps() {
        let ids = IdGenerator::default();
        let a = ids.next(1_000, [0xff; 10]);
        let b = ids.next(1_000, [0x00; 10]);
        let c = ids.next(999, [0x00; 10]);
        let d = ids.next(1_001, [0x00; 10]);
        assert!(a < b && b < c && c < d, "{a} {b} {c} {d}");
        assert_eq!(d.created_at(), 1_001);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "nope",
            "0190a0b0-0000-7000-8000-00000000000",
            "0190a0b0x0000-7000-8000-000000000000",
            "0190a0b0-0000-7000-8000-00000000000g",
            "+190a0b0-0000-7000-8000-000000000000",
        ] {
            assert!(bad.parse::<Id>().is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_user_ids_do_not_deserialize() {
        assert_eq!(serde_json::from_str::<UserId>("\"bob\"").unwrap(), UserId("bob".into()));
        for bad in ["\"\"", "\"a\\u0000b\"", "12"] {
            assert!(serde_json::from_str::<UserId>(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<UserId>(&format!("\"{}\"", "x".repeat(129))).is_err());
    }

    #[test]
    fn bodies_are_checked() {
        assert_eq!(validate_body("  \n\t"), Err(InvalidInput::EmptyBody));
        assert_eq!(validate_body(""), Err(InvalidInput::EmptyBody));
        assert!(validate_body(" hi ").is_ok());
        assert!(validate_body(&"a".repeat(MAX_BODY_BYTES)).is_ok());
        assert_eq!(
            validate_body(&"a".repeat(MAX_BODY_BYTES + 1)),
            Err(InvalidInput::BodyTooLarge(MAX_BODY_BYTES + 1))
        );
    }

    #[test]
    fn pending_messages_order_after_sent_ones() {
        assert!(display_order(Some(1 << 40), 0) < display_order(None, 0));
        assert!(display_order(None, 1) < display_order(None, 2));
        assert_eq!(display_order(None, 1 << 50), (1u64 << 52) + (1 << 50));
    }
}
