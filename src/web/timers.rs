//! Time and wake-ups for the sync loop in the browser: a [`Timeout`] that
//! runs a callback once and is cancelled by dropping it, a [`sleep`] future
//! on it, a [`Trigger`] to wait for "a deadline or a wake-up, whichever comes
//! first", and [`BrowserEvents`], the page's `online`/`offline` and
//! `visibilitychange` events, unregistered on drop.
//!
//! Everything here is RAII: a dropped timer or listener never fires, and its
//! closure is freed at once. [`Timeout`] and [`sleep`] are gloo-timers'
//! (`callback::Timeout`, `future::TimeoutFuture`, +328 bytes gzip over our
//! own, README "Dependencies"), which call the global `setTimeout`, so they
//! work in windows and workers alike; [`Trigger`] and [`BrowserEvents`],
//! which gloo-timers has nothing for, are ours.

use std::cell::RefCell;
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;

use tokio::sync::Notify;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::core::model::Millis;

/// `setTimeout` takes a signed 32-bit delay and fires at once on anything
/// larger (about 24.8 days); longer waits are clamped to it.
const MAX_DELAY_MS: Millis = i32::MAX as Millis;

fn delay(ms: Millis) -> u32 {
    ms.min(MAX_DELAY_MS) as u32
}

/// A callback scheduled with `setTimeout` (gloo-timers, which calls the
/// global function, so workers have it too), run at most once. Dropping the
/// `Timeout` before it fires cancels it.
#[must_use = "dropping a Timeout cancels it"]
#[derive(Debug)]
pub struct Timeout {
    _timer: gloo_timers::callback::Timeout,
}

impl Timeout {
    /// Runs `callback` after `ms` milliseconds (clamped to about 24.8 days).
    pub fn new(ms: Millis, callback: impl FnOnce() + 'static) -> Timeout {
        Timeout { _timer: gloo_timers::callback::Timeout::new(delay(ms), callback) }
    }
}

/// The future of [`sleep`] (gloo-timers): the timer starts when it is made
/// and is cancelled when it is dropped.
pub type Sleep = gloo_timers::future::TimeoutFuture;

/// Completes after `ms` milliseconds.
pub fn sleep(ms: Millis) -> Sleep {
    gloo_timers::future::TimeoutFuture::new(delay(ms))
}

/// Runs `future` for at most `ms` milliseconds: `None` if time ran out, in
/// which case the future is dropped (a fetch is then aborted by its own drop).
pub async fn timeout<F: Future>(ms: Millis, future: F) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut deadline = sleep(ms);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        Pin::new(&mut deadline).poll(cx).map(|()| None)
    })
    .await
}

/// Why [`Trigger::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// The timeout passed.
    Deadline,
    /// [`Trigger::fire`] was called.
    Fired,
}

/// A wake-up call for a loop that otherwise sleeps until its next deadline
/// (an outbox row falling due): pokes, `online`, the tab becoming visible,
/// `syncNow()` fire it.
///
/// Fires are not lost while nobody waits, and they coalesce: however many
/// come while the loop is busy, its next [`wait`](Trigger::wait) returns
/// [`Wakeup::Fired`] once, at once. Clones share the trigger.
#[derive(Debug, Clone, Default)]
pub struct Trigger(Rc<Notify>);

impl Trigger {
    /// A trigger nobody has fired.
    pub fn new() -> Trigger {
        Trigger::default()
    }

    /// Wakes the waiter, or the next one if nobody waits now.
    pub fn fire(&self) {
        self.0.notify_one();
    }

    /// Waits until the trigger fires or `timeout` milliseconds pass
    /// (`None`: no deadline). A fire made before the call counts.
    pub async fn wait(&self, timeout: Option<Millis>) -> Wakeup {
        let mut notified = pin!(self.0.notified());
        let mut deadline = timeout.map(sleep);
        std::future::poll_fn(|cx| {
            // The trigger first: when both are ready, the news wins.
            if notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wakeup::Fired);
            }
            match deadline.as_mut().map(|sleep| Pin::new(sleep).poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Wakeup::Deadline),
                _ => Poll::Pending,
            }
        })
        .await
    }
}

/// A page event that should make the sync loop act at once or pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowserEvent {
    /// The browser believes it is online again (`online`).
    Online,
    /// The browser lost its network (`offline`). `navigator.onLine` can be
    /// true while the server is unreachable, never the reverse.
    Offline,
    /// The tab became visible (`visibilitychange`).
    Visible,
    /// The tab was hidden (`visibilitychange`).
    Hidden,
}

/// One registered event listener, removed on drop.
struct Listener {
    target: web_sys::EventTarget,
    kind: &'static str,
    callback: Closure<dyn FnMut()>,
}

impl Listener {
    fn new(
        target: web_sys::EventTarget,
        kind: &'static str,
        callback: Closure<dyn FnMut()>,
    ) -> Option<Listener> {
        target.add_event_listener_with_callback(kind, callback.as_ref().unchecked_ref()).ok()?;
        Some(Listener { target, kind, callback })
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self
            .target
            .remove_event_listener_with_callback(self.kind, self.callback.as_ref().unchecked_ref());
    }
}

/// Listens to `online`/`offline` on the window and `visibilitychange` on the
/// document while it lives. In a worker, which has no window or document, it
/// listens to nothing.
#[must_use = "dropping BrowserEvents unregisters its listeners"]
pub struct BrowserEvents {
    _listeners: Vec<Listener>,
}

impl std::fmt::Debug for BrowserEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserEvents").field("listeners", &self._listeners.len()).finish()
    }
}

impl BrowserEvents {
    /// Calls `callback` with every [`BrowserEvent`] until dropped.
    pub fn listen(callback: impl FnMut(BrowserEvent) + 'static) -> BrowserEvents {
        let mut listeners = Vec::new();
        let Some(window) = web_sys::window() else {
            return BrowserEvents { _listeners: listeners };
        };
        let callback = Rc::new(RefCell::new(callback));
        let emit = |event_of: fn() -> BrowserEvent| {
            let callback = Rc::clone(&callback);
            Closure::<dyn FnMut()>::new(move || {
                // A callback that re-enters (dispatches another such event
                // synchronously) is not called again for it.
                if let Ok(mut callback) = callback.try_borrow_mut() {
                    callback(event_of());
                }
            })
        };
        let target: &web_sys::EventTarget = window.as_ref();
        listeners.extend(Listener::new(target.clone(), "online", emit(|| BrowserEvent::Online)));
        listeners.extend(Listener::new(target.clone(), "offline", emit(|| BrowserEvent::Offline)));
        if let Some(document) = window.document() {
            let visibility = || if is_visible() { BrowserEvent::Visible } else { BrowserEvent::Hidden };
            listeners.extend(Listener::new(document.into(), "visibilitychange", emit(visibility)));
        }
        BrowserEvents { _listeners: listeners }
    }
}

/// `navigator.onLine` (true where unknown, e.g. outside a window).
pub fn is_online() -> bool {
    web_sys::window().map(|w| w.navigator().on_line()).unwrap_or(true)
}

/// Whether the page is visible (true where unknown, e.g. in a worker).
pub fn is_visible() -> bool {
    web_sys::window()
        .and_then(|w| w.document())
        .map(|d| d.visibility_state() != web_sys::VisibilityState::Hidden)
        .unwrap_or(true)
}
