//! One unit of work: a change to the store and the audit records that say it happened commit
//! together, or neither does.
//!
//! Every state change outside the token endpoint's batched writer goes through a [`Change`]:
//! begin it, make the writes on it (it dereferences to the transaction's connection), say what
//! happened with [`Change::record`], then [`Change::commit`]. Dropping it uncommitted (an early
//! return, an error) rolls everything back, records included.

use std::ops::{Deref, DerefMut};

use sqlx::AnyConnection;

use super::AuditEvent;
use crate::store::{Backend, Store, StoreError};

/// A write transaction and the audit records it will append when it commits.
pub struct Change {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    events: Vec<AuditEvent>,
    store: Store,
}

impl std::fmt::Debug for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.events.iter().map(|e| e.event.as_str()).collect();
        f.debug_struct("Change").field("backend", &self.backend).field("events", &names).finish_non_exhaustive()
    }
}

impl Change {
    /// Begins a change (a write transaction: on SQLite it holds the write lock at once).
    pub async fn begin(store: &Store) -> Result<Change, StoreError> {
        Ok(Change {
            tx: store.begin_write().await?,
            backend: store.backend(),
            events: Vec::new(),
            store: store.clone(),
        })
    }

    /// Takes the lock that serialises appends to the chain now rather than at commit: for a
    /// change that counts or numbers something every other append must see in order (pending
    /// requests, the revocation feed). Held until the change ends.
    pub async fn lock_chain(&mut self) -> Result<(), StoreError> {
        super::lock(&mut self.tx, self.backend).await
    }

    /// Adds a record to append, in order, when the change commits.
    pub fn record(&mut self, event: AuditEvent) {
        self.events.push(event);
    }

    /// Appends the records at time `at` and commits: the change and its records are durable
    /// together, or not at all.
    pub async fn commit(mut self, at: i64) -> Result<(), StoreError> {
        if !self.events.is_empty() {
            super::append(&mut self.tx, self.backend, &self.events, at).await?;
        }
        self.tx.commit().await?;
        self.store.publish(self.events.into_iter().map(|e| crate::store::Committed {
            event: e.event,
            actor: e.actor,
            tenant: e.tenant,
            subject: e.subject,
            detail: e.detail,
        }));
        Ok(())
    }
}

impl Deref for Change {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl DerefMut for Change {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}
