//! An in-memory [`Store`] for unit tests of the logic above the store.

use crate::{Batch, Op, Store, StoreError, Table};
use parking_lot::RwLock;
use std::collections::BTreeMap;

/// A [`Store`] held in memory: same semantics as the real one, nothing durable.
#[derive(Debug)]
pub struct MemStore {
    tables: Vec<Table>,
    data: RwLock<BTreeMap<(Table, String), Vec<u8>>>,
}

impl MemStore {
    pub fn new(tables: &[Table]) -> Self {
        Self { tables: tables.to_vec(), data: RwLock::new(BTreeMap::new()) }
    }

    fn check(&self, table: Table) -> Result<Table, StoreError> {
        self.tables.iter().find(|t| **t == table).copied().ok_or(StoreError::UnknownTable(table))
    }
}

impl Store for MemStore {
    fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let table = self.check(table)?;
        Ok(self.data.read().get(&(table, key.to_owned())).cloned())
    }

    fn scan_prefix(&self, table: Table, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let table = self.check(table)?;
        let data = self.data.read();
        Ok(data
            .range((table, prefix.to_owned())..)
            .take_while(|((t, k), _)| *t == table && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        for op in batch.ops() {
            match op {
                Op::Put { table, .. } | Op::Delete { table, .. } => {
                    self.check(table)?;
                }
            }
        }
        let mut data = self.data.write();
        for op in batch.ops {
            match op {
                Op::Put { table, key, value } => {
                    data.insert((table, key), value);
                }
                Op::Delete { table, key } => {
                    data.remove(&(table, key));
                }
            }
        }
        Ok(())
    }
}
