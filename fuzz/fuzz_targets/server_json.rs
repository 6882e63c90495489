//! Everything the client reads from a server: push, pull, session, invite
//! and error bodies, and socket events. Any bytes give a value or an error,
//! never a panic; a value read survives a round trip through its JSON.
#![no_main]

use dovecote::core::sync::{
    AcceptResponse, Change, ErrorBody, InviteResponse, PullResponse, PushResponse, ServerEvent,
    SessionResponse,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        let text = serde_json::to_string(&value).expect("a value read serializes");
        assert_eq!(serde_json::from_str::<T>(&text).expect("its own JSON reads back"), value);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<PullResponse>(data);
    round_trip::<Change>(data);
    round_trip::<PushResponse>(data);
    round_trip::<SessionResponse>(data);
    round_trip::<InviteResponse>(data);
    round_trip::<AcceptResponse>(data);
    round_trip::<ErrorBody>(data);
    let _ = serde_json::from_slice::<ServerEvent>(data);
});
