//! An in-memory [`Store`], for native tests and simulations. It keeps the
//! same rules as the IndexedDB store (the contract suite checks both) and can
//! be told to fail writes, to test what callers do then.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::core::model::{MessageId, MessageRecord, Mutation, ThreadId, ThreadRecord};
use crate::ports::{Store, StoreError, StoreResult, WrappedKey, Write};

#[derive(Debug, Clone, Default)]
struct Tables {
    threads: BTreeMap<ThreadId, ThreadRecord>,
    messages: HashMap<MessageId, MessageRecord>,
    outbox: BTreeMap<u64, Mutation>,
    last_mutation_id: u64,
    keys: BTreeMap<String, WrappedKey>,
    meta: HashMap<String, String>,
}

/// An in-memory store. Clones share the same tables, like two connections
/// to one database; that is how a test "restarts" a client on the same data.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    tables: Rc<RefCell<Tables>>,
    failing_writes: Rc<Cell<u32>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next `count` writes fail (and change nothing).
    pub fn fail_next_writes(&self, count: u32) {
        self.failing_writes.set(count);
    }
}

impl Store for MemoryStore {
    async fn write(&self, writes: Vec<Write>) -> StoreResult<Vec<u64>> {
        if self.failing_writes.get() > 0 {
            self.failing_writes.set(self.failing_writes.get() - 1);
            return Err(StoreError::Other("injected write failure".into()));
        }
        // Apply to a copy and swap it in: all or nothing.
        let mut next = self.tables.borrow().clone();
        let mut assigned = Vec::new();
        for write in writes {
            match write {
                Write::PutThread(t) => {
                    next.threads.insert(t.id, t);
                }
                Write::PutMessage(m) => {
                    next.messages.insert(m.id, m);
                }
                Write::Enqueue(mut m) => {
                    next.last_mutation_id += 1;
                    m.mutation_id = next.last_mutation_id;
                    assigned.push(m.mutation_id);
                    next.outbox.insert(m.mutation_id, m);
                }
                Write::PutMutation(m) => {
                    next.outbox.insert(m.mutation_id, m);
                }
                Write::RemoveMutation(id) => {
                    next.outbox.remove(&id);
                }
                Write::Expect(m) => {
                    if next.outbox.get(&m.mutation_id) != Some(&m) {
                        return Err(StoreError::Conflict);
                    }
                }
                Write::PutKey(k) => {
                    next.keys.insert(k.key_id.to_string(), k);
                }
                Write::PutMeta { key, value } => {
                    next.meta.insert(key, value);
                }
            }
        }
        *self.tables.borrow_mut() = next;
        Ok(assigned)
    }

    async fn thread(&self, id: ThreadId) -> StoreResult<Option<ThreadRecord>> {
        Ok(self.tables.borrow().threads.get(&id).cloned())
    }

    async fn threads(&self) -> StoreResult<Vec<ThreadRecord>> {
        Ok(self.tables.borrow().threads.values().cloned().collect())
    }

    async fn message(&self, id: MessageId) -> StoreResult<Option<MessageRecord>> {
        Ok(self.tables.borrow().messages.get(&id).cloned())
    }

    async fn messages_before(
        &self,
        thread: ThreadId,
        before: Option<(u64, MessageId)>,
        limit: u32,
    ) -> StoreResult<Vec<MessageRecord>> {
        let tables = self.tables.borrow();
        let mut page: Vec<&MessageRecord> = tables
            .messages
            .values()
            .filter(|m| m.thread_id == thread)
            .filter(|m| before.is_none_or(|(order, id)| (m.order, m.id) < (order, id)))
            .collect();
        page.sort_by(|a, b| (b.order, b.id).partial_cmp(&(a.order, a.id)).expect("orders are finite"));
        Ok(page.into_iter().take(limit as usize).cloned().collect())
    }

    async fn outbox(&self) -> StoreResult<Vec<Mutation>> {
        Ok(self.tables.borrow().outbox.values().cloned().collect())
    }

    async fn keys(&self) -> StoreResult<Vec<WrappedKey>> {
        Ok(self.tables.borrow().keys.values().cloned().collect())
    }

    async fn meta(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self.tables.borrow().meta.get(key).cloned())
    }
}
