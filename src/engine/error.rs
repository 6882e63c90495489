//! The engine's error type: what a caller of the SDK can get back.

use crate::core::keys::KeyError;
use crate::core::model::InvalidInput;
use crate::core::outbox::Refusal;
use crate::ports::StoreError;

/// Everything that can go wrong in a client call. Each variant has a stable
/// [`code`](Error::code) that the JS bindings put on the `Error` object.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller's input was refused; nothing was written.
    #[error("{0}")]
    InvalidInput(#[from] InvalidInput),
    /// No such thread or message on this device.
    #[error("no {what} with id {id}")]
    NotFound {
        /// "thread" or "message".
        what: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The database was made by another user.
    #[error("this database belongs to user {owner:?}, not {user:?}")]
    WrongUser {
        /// Who owns the database.
        owner: String,
        /// Who tried to open it.
        user: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key could not be made, wrapped or unwrapped.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A payload could not be sealed.
    #[error("could not encrypt: {0}")]
    Seal(String),
    /// The passphrase does not open this database. Nothing was read beyond
    /// the key-check record, and nothing was written.
    #[error("wrong passphrase")]
    WrongPassphrase,
    /// The database is protected by a passphrase and none was given.
    #[error("this database is protected by a passphrase; open it with one")]
    PassphraseRequired,
    /// The message is another user's: only its sender may change it.
    #[error("only the sender may change this message")]
    NotSender,
    /// The message was deleted or cancelled; it cannot be changed.
    #[error("the message was deleted")]
    Deleted,
    /// The outbox refused a retry or cancel (see the code).
    #[error(transparent)]
    Refused(Refusal),
    /// A passphrase option that cannot be used: empty, or given for a
    /// database that was created without one. Nothing was written.
    #[error("{0}")]
    PassphraseRefused(&'static str),
}

impl Error {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidInput(_) => "invalid_input",
            Error::NotFound { .. } => "not_found",
            Error::Closed => "closed",
            Error::WrongUser { .. } => "wrong_user",
            Error::Store(StoreError::Quota(_)) => "quota_exceeded",
            Error::Store(StoreError::VersionChange) => "version_change",
            Error::Store(StoreError::Open(_)) => "storage_unavailable",
            Error::Store(_) => "storage",
            Error::Key(e) => e.code(),
            Error::Seal(_) => "crypto",
            Error::WrongPassphrase => "wrong_passphrase",
            Error::PassphraseRequired => "passphrase_required",
            Error::PassphraseRefused(_) => "invalid_input",
            Error::NotSender => "not_sender",
            Error::Deleted => "deleted",
            Error::Refused(refusal) => match refusal {
                Refusal::NotQueued => "not_queued",
                Refusal::InFlight => "in_flight",
                Refusal::MaybeSent => "maybe_sent",
                Refusal::NotFailed => "not_failed",
            },
        }
    }
}

/// The engine's result type.
pub type Result<T> = std::result::Result<T, Error>;
