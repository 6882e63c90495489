//! Signed tokens: DEV-ONLY session tokens and thread invites.
//!
//! A token is `KIND.PAYLOAD.MAC`: `PAYLOAD` is base64url JSON, `MAC` is
//! HMAC-SHA256 over `KIND.PAYLOAD` with the server secret (made at first start
//! and kept in the database, so tokens outlive restarts). The kind is inside
//! the MAC, so an invite can never be replayed as a session or the reverse.
//!
//! Session tokens are stateless and cannot be revoked before they expire;
//! that is acceptable for the dev sign-in this server offers and nothing more.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use dovecote::core::model::{Millis, ThreadId, UserId};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const SESSION_KIND: &str = "s1";
const INVITE_KIND: &str = "i1";

/// Why a token was refused. Callers answer all of them the same way (401 or
/// `invite_invalid`); the variants exist for tests and debugging.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not three dot-separated parts of the right kind, or bad base64/JSON.
    #[error("malformed token")]
    Malformed,
    /// The MAC does not match: forged or made with another secret.
    #[error("bad token signature")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
}

/// What a session token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The signed-in user.
    #[serde(rename = "u")]
    pub user: UserId,
    /// Expiry, ms since the epoch.
    #[serde(rename = "e")]
    pub expires_at: Millis,
}

/// What an invite token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteClaims {
    /// The thread it admits to.
    #[serde(rename = "t")]
    pub thread_id: ThreadId,
    /// Who made it.
    #[serde(rename = "by")]
    pub created_by: UserId,
    /// Expiry, ms since the epoch.
    #[serde(rename = "e")]
    pub expires_at: Millis,
    /// Random, so that two invites are never equal.
    #[serde(rename = "n")]
    pub nonce: String,
}

/// Signs and checks tokens with the server secret.
#[derive(Clone)]
pub struct Signer {
    secret: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(..)") // never print the secret
    }
}

impl Signer {
    /// A signer over a 32-byte secret.
    pub fn new(secret: [u8; 32]) -> Self {
        Signer { secret }
    }

    fn mac(&self, signed: &str) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        mac.update(signed.as_bytes());
        mac
    }

    fn sign<T: Serialize>(&self, kind: &str, claims: &T) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signed = format!("{kind}.{payload}");
        let tag = URL_SAFE_NO_PAD.encode(self.mac(&signed).finalize().into_bytes());
        format!("{signed}.{tag}")
    }

    fn verify<T: for<'de> Deserialize<'de>>(&self, kind: &str, token: &str) -> Result<T, TokenError> {
        let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (token_kind, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if token_kind != kind {
            return Err(TokenError::Malformed);
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed)?;
        // verify_slice compares in constant time.
        self.mac(signed).verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
    }

    /// A session token for `user`, valid until `expires_at`.
    pub fn session_token(&self, user: &UserId, expires_at: Millis) -> String {
        self.sign(SESSION_KIND, &SessionClaims { user: user.clone(), expires_at })
    }

    /// Checks a session token at time `now`.
    pub fn verify_session(&self, token: &str, now: Millis) -> Result<SessionClaims, TokenError> {
        let claims: SessionClaims = self.verify(SESSION_KIND, token)?;
        if claims.expires_at <= now {
            return Err(TokenError::Expired);
        }
        // The signature covers the user id, but check its shape anyway so a
        // token minted by an older, laxer build cannot smuggle odd ids in.
        UserId::parse(claims.user.as_str()).map_err(|_| TokenError::Malformed)?;
        Ok(claims)
    }

    /// An invite token to `thread_id`, valid until `expires_at`.
    pub fn invite_token(&self, claims: &InviteClaims) -> String {
        self.sign(INVITE_KIND, claims)
    }

    /// Checks an invite token for `thread_id` at time `now`.
    pub fn verify_invite(&self, token: &str, now: Millis) -> Result<InviteClaims, TokenError> {
        let claims: InviteClaims = self.verify(INVITE_KIND, token)?;
        if claims.expires_at <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// 32 random bytes from the OS.
pub fn random_secret() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
}

/// A random base64url string of `n` bytes of entropy.
pub fn random_string(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    #[test]
    fn session_tokens_round_trip_and_expire() {
        let s = Signer::new([7; 32]);
        let t = s.session_token(&alice(), 1_000);
        assert_eq!(s.verify_session(&t, 999).unwrap().user, alice());
        assert_eq!(s.verify_session(&t, 1_000), Err(TokenError::Expired));
    }

    #[test]
    fn forged_and_foreign_tokens_are_refused() {
        let s = Signer::new([7; 32]);
        let other = Signer::new([8; 32]);
        let t = other.session_token(&alice(), u64::MAX);
        assert_eq!(s.verify_session(&t, 0), Err(TokenError::BadSignature));

        // Swap the payload for another user's, keep the MAC.
        let good = s.session_token(&alice(), u64::MAX);
        let mallory = s.session_token(&UserId::parse("mallory").unwrap(), u64::MAX);
        let (_, mac) = good.rsplit_once('.').unwrap();
        let (signed, _) = mallory.rsplit_once('.').unwrap();
        assert_eq!(s.verify_session(&format!("{signed}.{mac}"), 0), Err(TokenError::BadSignature));

        for junk in ["", "a.b", "s1..", "s1.e30.", "nonsense", "s1.!!!.abc"] {
            assert!(s.verify_session(junk, 0).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn an_invite_is_not_a_session() {
        let s = Signer::new([7; 32]);
        let invite = s.invite_token(&InviteClaims {
            thread_id: ThreadId::from_parts(1, [1; 10]),
            created_by: alice(),
            expires_at: u64::MAX,
            nonce: random_string(8),
        });
        assert!(s.verify_invite(&invite, 0).is_ok());
        assert_eq!(s.verify_session(&invite, 0), Err(TokenError::Malformed));
        let session = s.session_token(&alice(), u64::MAX);
        assert!(s.verify_invite(&session, 0).is_err());
    }
}
