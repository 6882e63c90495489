//! The outbox state machine (DESIGN.md §2, §3): see the issue on the mutation queue.
