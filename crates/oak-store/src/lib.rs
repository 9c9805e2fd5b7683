//! Persistence for the orchestrators: a small key-value [`Store`] trait and its embedded,
//! single-file ACID implementation on redb ([`RedbStore`]), plus an in-memory [`MemStore`]
//! for unit tests.
//!
//! The trait is deliberately the intersection of what an embedded B-tree and etcd offer
//! (point get, prefix scan, atomic multi-key batch), so a replicated backend can replace the
//! file for a highly available root. This crate knows nothing of HTTP, users or scheduling.
//!
//! Architecture invariant: [`Store::commit`] returns only after the batch is durable (fsynced);
//! callers acknowledge a request only after that.

pub mod datadir;
mod mem;
mod redb_store;
pub mod secret;

pub use mem::MemStore;
pub use redb_store::RedbStore;

/// A table name. Tables are declared when a store is opened.
pub type Table = &'static str;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store table {0:?} was not declared when the store was opened")]
    UnknownTable(Table),
    #[error("cannot open store at {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("store backend failed: {0}")]
    Backend(String),
}

/// One write in a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put { table: Table, key: String, value: Vec<u8> },
    Delete { table: Table, key: String },
}

/// Writes applied all together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, table: Table, key: impl Into<String>, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Put { table, key: key.into(), value });
        self
    }
    pub fn delete(&mut self, table: Table, key: impl Into<String>) -> &mut Self {
        self.ops.push(Op::Delete { table, key: key.into() });
        self
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }
}

/// A transactional key-value store with string keys, ordered within a table.
pub trait Store: Send + Sync + 'static {
    /// The value under `key`, if any.
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Applies the batch atomically; durable when this returns `Ok`.
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests;
