//! The embedded store: one redb file, one redb table per [`Table`].

use crate::{Batch, Op, Store, StoreError, Table};
use redb::{Database, ReadableDatabase, TableDefinition};
use std::path::Path;

/// A [`Store`] in a single redb file. Every commit is fsynced before it returns.
pub struct RedbStore {
    db: Database,
    tables: Vec<Table>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore").field("tables", &self.tables).finish_non_exhaustive()
    }
}

fn def(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table)
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(e.into().to_string())
}

impl RedbStore {
    /// Opens (or creates, mode `0600`) the store file at `path` and makes sure every table
    /// exists. A store file other users can read or write is refused: it holds secrets.
    pub fn open(path: &Path, tables: &[Table]) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open { path: path.display().to_string(), reason };
        crate::datadir::touch_private(path).map_err(|e| open_err(e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).map_err(|e| open_err(e.to_string()))?.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(open_err(format!(
                    "it is mode {mode:04o}, open to other users; set it with `chmod 600 {}`",
                    path.display()
                )));
            }
        }
        let db = Database::create(path)
            .map_err(|e| StoreError::Open { path: path.display().to_string(), reason: e.to_string() })?;
        let txn = db.begin_write().map_err(backend)?;
        for t in tables {
            txn.open_table(def(t)).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(Self { db, tables: tables.to_vec() })
    }

    fn check(&self, table: Table) -> Result<Table, StoreError> {
        self.tables.iter().find(|t| **t == table).copied().ok_or(StoreError::UnknownTable(table))
    }
}

impl Store for RedbStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let table = self.check(table)?;
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(def(table)).map_err(backend)?;
        Ok(t.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn scan_prefix(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let table = self.check(table)?;
        let txn = self.db.begin_read().map_err(backend)?;
        let t = txn.open_table(def(table)).map_err(backend)?;
        let mut out = Vec::new();
        for entry in t.range(prefix..).map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        for op in batch.ops() {
            match op {
                Op::Put { table, .. } | Op::Delete { table, .. } => {
                    self.check(table)?;
                }
            }
        }
        let txn = self.db.begin_write().map_err(backend)?;
        for op in batch.ops() {
            match op {
                Op::Put { table, key, value } => {
                    let mut t = txn.open_table(def(table)).map_err(backend)?;
                    t.insert(key.as_str(), value.as_slice()).map_err(backend)?;
                }
                Op::Delete { table, key } => {
                    let mut t = txn.open_table(def(table)).map_err(backend)?;
                    t.remove(key.as_str()).map_err(backend)?;
                }
            }
        }
        // Dropping an uncommitted transaction aborts it, so an error above leaves nothing.
        txn.commit().map_err(backend)
    }
}
