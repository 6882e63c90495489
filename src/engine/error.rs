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
    #[error("this database belongs to user \"{owner}\", not \"{user}\"")]
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

/// Declares the one list of error codes: [`ERROR_CODES`] for Rust and its
/// TypeScript twin [`ERROR_CODES_TS`] (the package's `DovecoteErrorCode`),
/// so the two cannot drift. The tests below hold every code the SDK makes
/// to the list.
macro_rules! error_codes {
    ($($code:literal),* $(,)?) => {
        /// Every `code` the SDK puts on a thrown error, a failed message
        /// status, an outbox entry's error or a sync event's error.
        pub const ERROR_CODES: &[&str] = &[$($code),*];
        /// [`ERROR_CODES`] as the TypeScript union `DovecoteErrorCode`.
        pub const ERROR_CODES_TS: &str = concat!(
            "\n/**\n * Every `code` dovecote puts on an error: thrown errors (`DovecoteError`),\n",
            " * failed message statuses, outbox entries and sync events. Sync failures\n",
            " * carry the server's code (docs/protocol.md) or one of the transport's.\n */\n",
            "export type DovecoteErrorCode =",
            $("\n  | \"", $code, "\""),*,
            ";\n"
        );
    };
}

error_codes![
    // Client calls (Error::code, KeyError::code).
    "invalid_input",
    "not_found",
    "closed",
    "wrong_user",
    "wrong_passphrase",
    "passphrase_required",
    "storage",
    "storage_unavailable",
    "quota_exceeded",
    "version_change",
    // The wasm instance trapped (web::fatal): every call rejects with it.
    "fatal",
    // getToken rejected or gave no token (web::driver).
    "token_unavailable",
    "crypto",
    "random_unavailable",
    "not_sender",
    "deleted",
    "not_queued",
    "in_flight",
    "maybe_sent",
    "not_failed",
    "unwrap_failed",
    "wrapped_truncated",
    "wrapped_version",
    "invalid_key_id",
    "key_id_conflict",
    "invite_encoding",
    "invite_truncated",
    "invite_version",
    "invite_malformed",
    // Requests that failed (core::outbox::classify).
    "network",
    "timeout",
    "protocol",
    "rate_limited",
    "server_error",
    "bad_request",
    "unauthorized",
    "forbidden",
    "conflict",
    "too_large",
    "invalid",
    "http_error",
    "unexpected_status",
    // The server's own codes (docs/protocol.md §4.3 rejections, §8 errors).
    "unsupported_protocol",
    "invite_invalid",
    "method_not_allowed",
    "internal",
    "not_member",
    "edit_deleted",
    "out_of_order",
    "thread_full",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::outbox::{classify, ErrorClass, TransportFailure};

    fn listed(code: &str) -> bool {
        ERROR_CODES.contains(&code)
    }

    #[test]
    fn every_error_variant_has_a_listed_code() {
        let key_errors = [
            KeyError::Random(getrandom::Error::UNSUPPORTED),
            KeyError::InvalidKeyId,
            KeyError::InviteEncoding,
            KeyError::InviteTruncated,
            KeyError::InviteVersion(9),
            KeyError::InviteMalformed("x"),
            KeyError::WrappedTruncated,
            KeyError::WrappedVersion(9),
            KeyError::UnwrapFailed,
            KeyError::KeyIdConflict(crate::core::keys::KeyId([0; crate::core::keys::KEY_ID_LEN])),
        ];
        let mut errors = vec![
            Error::InvalidInput(InvalidInput::EmptyBody),
            Error::NotFound { what: "thread", id: "x".into() },
            Error::Closed,
            Error::WrongUser { owner: "a".into(), user: "b".into() },
            Error::Store(StoreError::Open("x".into())),
            Error::Store(StoreError::Quota("x".into())),
            Error::Store(StoreError::VersionChange),
            Error::Store(StoreError::Corrupt { store: "x", reason: "y".into() }),
            Error::Store(StoreError::Conflict),
            Error::Store(StoreError::Other("x".into())),
            Error::Seal("x".into()),
            Error::WrongPassphrase,
            Error::PassphraseRequired,
            Error::NotSender,
            Error::Deleted,
            Error::Refused(Refusal::NotQueued),
            Error::Refused(Refusal::InFlight),
            Error::Refused(Refusal::MaybeSent),
            Error::Refused(Refusal::NotFailed),
            Error::PassphraseRefused("x"),
        ];
        errors.extend(key_errors.into_iter().map(Error::Key));
        // No wildcard: a new variant fails to compile here until it is
        // added to the list above (and its code to ERROR_CODES).
        let covered = |e: &Error| match e {
            Error::InvalidInput(_)
            | Error::NotFound { .. }
            | Error::Closed
            | Error::WrongUser { .. }
            | Error::Store(
                StoreError::Open(_)
                | StoreError::Quota(_)
                | StoreError::VersionChange
                | StoreError::Corrupt { .. }
                | StoreError::Conflict
                | StoreError::Other(_),
            )
            | Error::Key(
                KeyError::Random(_)
                | KeyError::InvalidKeyId
                | KeyError::InviteEncoding
                | KeyError::InviteTruncated
                | KeyError::InviteVersion(_)
                | KeyError::InviteMalformed(_)
                | KeyError::WrappedTruncated
                | KeyError::WrappedVersion(_)
                | KeyError::UnwrapFailed
                | KeyError::KeyIdConflict(_),
            )
            | Error::Seal(_)
            | Error::WrongPassphrase
            | Error::PassphraseRequired
            | Error::NotSender
            | Error::Deleted
            | Error::Refused(
                Refusal::NotQueued | Refusal::InFlight | Refusal::MaybeSent | Refusal::NotFailed,
            )
            | Error::PassphraseRefused(_) => true,
        };
        assert!(errors.iter().all(covered));
        for error in &errors {
            assert!(
                listed(error.code()),
                "{:?} has code {:?}, missing from ERROR_CODES",
                error,
                error.code()
            );
        }
    }

    #[test]
    fn every_transport_failure_has_a_listed_code() {
        let mut failures = vec![
            TransportFailure::Network,
            TransportFailure::Timeout,
            TransportFailure::Protocol("x".into()),
        ];
        failures.extend((100..=599).map(|status| TransportFailure::Status {
            status,
            error: None,
            retry_after: None,
        }));
        for failure in &failures {
            let code = match classify(failure) {
                ErrorClass::Transient { code, .. } | ErrorClass::Permanent { code, .. } => code,
            };
            assert!(listed(&code), "{failure:?} gives code {code:?}, missing from ERROR_CODES");
        }
    }

    /// The server's codes are those of the protocol: every code in the
    /// error table (§8) and the rejection list (§4.3) of docs/protocol.md.
    #[test]
    fn every_protocol_code_is_listed() {
        let protocol = include_str!("../../docs/protocol.md");
        let errors =
            protocol.split("## 8. Errors").nth(1).expect("protocol.md has §8").split("\n## ").next().unwrap();
        let rejections = protocol.split("Rejection codes:").nth(1).expect("protocol.md lists rejections");
        let rejections = rejections.split("\n\n").next().unwrap();
        let mut found = 0;
        for line in errors.lines().filter(|l| l.starts_with("| 4") || l.starts_with("| 5")) {
            let code = line.split('`').nth(1).expect("a code in the row");
            assert!(listed(code), "protocol §8 code {code:?} missing from ERROR_CODES");
            found += 1;
        }
        for code in rejections.split('`').skip(1).step_by(2) {
            assert!(listed(code), "protocol rejection code {code:?} missing from ERROR_CODES");
            found += 1;
        }
        assert!(found >= 15, "read {found} codes from protocol.md: did its layout change?");
    }

    #[test]
    fn the_list_has_no_duplicates_and_matches_its_typescript() {
        for (i, code) in ERROR_CODES.iter().enumerate() {
            assert!(!ERROR_CODES[..i].contains(code), "{code} listed twice");
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{code}");
            assert!(
                ERROR_CODES_TS.contains(&format!("| \"{code}\"\n"))
                    || ERROR_CODES_TS.contains(&format!("| \"{code}\";"))
            );
        }
        assert_eq!(ERROR_CODES_TS.matches("\n  | \"").count(), ERROR_CODES.len());
    }

    /// docs/api.md explains every code a call can throw.
    #[test]
    fn the_api_reference_names_every_code() {
        let api = include_str!("../../docs/api.md");
        for code in ERROR_CODES {
            assert!(api.contains(&format!("`{code}`")), "docs/api.md does not mention `{code}`");
        }
    }
}
