//! Records read back from IndexedDB (src/web/idb.rs reads each as the JSON
//! text of the stored object): any text gives a record or an error, never a
//! panic, and a record read survives a round trip through its JSON.
#![no_main]

use dovecote::core::model::{MessageRecord, Mutation, ThreadRecord, UserId};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(text: &str) {
    if let Ok(value) = serde_json::from_str::<T>(text) {
        let again = serde_json::to_string(&value).expect("a record read serializes");
        assert_eq!(serde_json::from_str::<T>(&again).expect("its own JSON reads back"), value);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    round_trip::<ThreadRecord>(text);
    round_trip::<MessageRecord>(text);
    round_trip::<Mutation>(text);
    round_trip::<UserId>(text);
});
