//! What a trap does to the app: never leave it hanging.
//!
//! When the wasm instance traps (a panic, which aborts at once, or an
//! engine's miscompilation), the Rust code that was running stops where it
//! was: its futures never resolve, its `RefCell`s stay borrowed, its locks
//! stay held. Nothing in the instance can be trusted after that, so this
//! module does only what needs no such state:
//!
//! - every API call's promise races one shared promise that rejects with
//!   code `fatal` on the first trap ([`guarded`]), so pending calls reject,
//!   and later calls reject at once without running;
//! - the store refuses writes from then on ([`is_fatal`]), so no half-made
//!   decision reaches IndexedDB;
//! - the hooks registered by open clients run ([`on_fatal`]): they let go of
//!   the sync leader lock (so another tab takes over) and emit the `fatal`
//!   event.
//!
//! A trap is seen as a `WebAssembly.RuntimeError` that reaches the global
//! `error` event (a task of wasm-bindgen-futures runs in a microtask) or
//! `unhandledrejection`. Recovery is a reload: IndexedDB holds everything
//! a resolved call wrote.

use std::cell::{Cell, RefCell};
use std::future::Future;

use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::future_to_promise;

struct Fatal {
    /// Rejects with the `fatal` error on the first trap; every call races it.
    promise: Promise,
    reject: Function,
    hooks: RefCell<Vec<Box<dyn Fn()>>>,
    /// Keeps the global listeners alive.
    _listener: Closure<dyn Fn(JsValue)>,
}

thread_local! {
    static TRAPPED: Cell<bool> = const { Cell::new(false) };
    static FATAL: Fatal = Fatal::install();
}

impl Fatal {
    fn install() -> Fatal {
        let mut reject = None;
        let promise = Promise::new(&mut |_, rejected| reject = Some(rejected));
        // Handled here once, so a trap with no call pending logs nothing twice.
        let handled = Closure::<dyn FnMut(JsValue)>::new(|_| {});
        let _ = promise.catch(&handled);
        handled.forget(); // one, for the life of the instance
        let listener = Closure::<dyn Fn(JsValue)>::new(|event: JsValue| {
            let key = if js_sys::Reflect::has(&event, &"reason".into()).unwrap_or(false) {
                "reason"
            } else {
                "error"
            };
            let cause = js_sys::Reflect::get(&event, &key.into()).unwrap_or(JsValue::UNDEFINED);
            if cause.is_instance_of::<js_sys::WebAssembly::RuntimeError>() {
                trip(&cause);
            }
        });
        let global: web_sys::EventTarget = js_sys::global().unchecked_into();
        for event in ["error", "unhandledrejection"] {
            let _ = global.add_event_listener_with_callback(event, listener.as_ref().unchecked_ref());
        }
        Fatal {
            promise,
            reject: reject.expect("the executor runs at once"),
            hooks: RefCell::default(),
            _listener: listener,
        }
    }
}

/// Installs the trap listeners (once per instance; every `open` calls it).
pub fn install() {
    FATAL.with(|_| {});
}

/// Whether the instance has trapped: nothing more may be written.
pub fn is_fatal() -> bool {
    TRAPPED.with(Cell::get)
}

/// Runs `hook` on the first trap (at most once). Hooks must not rely on
/// state a trap may have left borrowed: use `try_borrow`.
pub fn on_fatal(hook: impl Fn() + 'static) {
    FATAL.with(|fatal| {
        if let Ok(mut hooks) = fatal.hooks.try_borrow_mut() {
            hooks.push(Box::new(hook));
        }
    });
}

/// The error every call rejects with after a trap.
fn fatal_error(cause: &JsValue) -> JsValue {
    let message = js_sys::Reflect::get(cause, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .unwrap_or_else(|| "the client stopped".into());
    super::bindings::dovecote_error(
        "fatal",
        &format!("dovecote stopped after an internal error ({message}); reload the page to go on"),
    )
}

fn trip(cause: &JsValue) {
    if TRAPPED.with(|t| t.replace(true)) {
        return;
    }
    FATAL.with(|fatal| {
        let _ = fatal.reject.call1(&JsValue::NULL, &fatal_error(cause));
        if let Ok(hooks) = fatal.hooks.try_borrow() {
            for hook in hooks.iter() {
                hook();
            }
        }
    });
}

/// `future_to_promise` for the API: the promise rejects with `fatal` if the
/// instance traps before it settles; after a trap, `work` does not run.
pub fn guarded(work: impl Future<Output = Result<JsValue, JsValue>> + 'static) -> Promise {
    if is_fatal() {
        return refused();
    }
    race_the_trap(future_to_promise(work))
}

// Out of line: `guarded` is instantiated once per API call.
#[inline(never)]
fn refused() -> Promise {
    Promise::reject(&fatal_error(&JsValue::UNDEFINED))
}

#[inline(never)]
fn race_the_trap(work: Promise) -> Promise {
    FATAL.with(|fatal| Promise::race(&js_sys::Array::of2(&work, &fatal.promise)))
}

/// Test builds only (`--features trap-hook`): traps in a task of its own,
/// as a panic inside the client would.
#[cfg(feature = "trap-hook")]
#[wasm_bindgen(js_name = forceTrap)]
pub fn force_trap() {
    wasm_bindgen_futures::spawn_local(async { core::arch::wasm32::unreachable() });
}
