//! The tab coordination parts inside a dedicated worker, where there is no
//! `window`: an app may run its client there.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use dovecote::web::tabs::{scope_name, Backend, LeaderElection, TabChannel, TabMessage};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_dedicated_worker);

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &js_sys::Function, ms: u32) -> JsValue;
}

async fn within(limit_ms: u32, done: impl Fn() -> bool) -> bool {
    for _ in 0..limit_ms / 10 {
        if done() {
            return true;
        }
        let promise = js_sys::Promise::new(&mut |resolve, _| {
            set_timeout(&resolve, 10);
        });
        wasm_bindgen_futures::JsFuture::from(promise).await.unwrap();
    }
    done()
}

fn unique(what: &str) -> String {
    scope_name(&format!("worker-{what}-{}", js_sys::Math::random()), "alice")
}

#[wasm_bindgen_test]
async fn a_worker_elects_with_web_locks_and_hands_over() {
    assert!(js_sys::Reflect::get(&js_sys::global(), &"document".into()).unwrap().is_undefined());
    let name = unique("locks");
    let a = LeaderElection::start(&name, |_| {});
    assert_eq!(a.backend(), Backend::WebLocks);
    assert!(within(1_000, || a.is_leader()).await);
    let b = LeaderElection::start(&name, |_| {});
    assert!(!within(200, || b.is_leader()).await);
    drop(a);
    assert!(within(1_000, || b.is_leader()).await);
}

#[wasm_bindgen_test]
async fn a_worker_holds_the_lease_in_indexeddb() {
    let name = unique("lease");
    let a = LeaderElection::start_with(&name, Backend::Lease, |_| {}).unwrap();
    assert!(within(2_000, || a.is_leader()).await);
    let b = LeaderElection::start_with(&name, Backend::Lease, |_| {}).unwrap();
    assert!(!within(1_500, || b.is_leader()).await);
    drop(a);
    assert!(within(2_500, || b.is_leader()).await);
}

#[wasm_bindgen_test]
async fn a_worker_talks_on_the_channel() {
    let name = unique("channel");
    let got: Rc<RefCell<Vec<TabMessage>>> = Rc::default();
    let log = got.clone();
    let _b = TabChannel::open(&name, move |m| log.borrow_mut().push(m)).unwrap();
    let a = TabChannel::open(&name, |_| {}).unwrap();
    a.post(&TabMessage::Wake).unwrap();
    assert!(within(1_000, || !got.borrow().is_empty()).await);
    assert_eq!(*got.borrow(), [TabMessage::Wake]);
}
