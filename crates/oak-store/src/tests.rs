use super::*;
use proptest::prelude::*;

const TABLES: &[Table] = &["a", "b"];

fn both() -> (tempfile::TempDir, Vec<Box<dyn Store>>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let redb = RedbStore::open(&dir.path().join("s.redb"), TABLES).unwrap_or_else(|e| panic!("{e}"));
    (dir, vec![Box::new(MemStore::new(TABLES)), Box::new(redb)])
}

#[test]
fn get_put_delete_scan() {
    let (_dir, stores) = both();
    for s in stores {
        let mut b = Batch::new();
        b.put("a", "u/1", b"one".to_vec()).put("a", "u/2", b"two".to_vec()).put("a", "v/1", b"x".to_vec());
        b.put("b", "u/3", b"other table".to_vec());
        s.commit(b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.get("a", "u/1").ok().flatten(), Some(b"one".to_vec()));
        assert_eq!(s.get("a", "u/3").ok().flatten(), None);
        let keys: Vec<String> = s.scan_prefix("a", "u/").unwrap_or_default().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["u/1", "u/2"]);
        let mut b = Batch::new();
        b.delete("a", "u/1");
        s.commit(b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.get("a", "u/1").ok().flatten(), None);
        assert!(matches!(s.get("zz", "k"), Err(StoreError::UnknownTable("zz"))));
    }
}

#[test]
fn a_batch_naming_an_unknown_table_changes_nothing() {
    let (_dir, stores) = both();
    for s in stores {
        let mut b = Batch::new();
        b.put("a", "k", b"v".to_vec()).put("nope", "k", b"v".to_vec());
        assert!(s.commit(b).is_err());
        assert_eq!(s.get("a", "k").ok().flatten(), None);
    }
}

#[test]
fn committed_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("s.redb");
    {
        let s = RedbStore::open(&path, TABLES).unwrap_or_else(|e| panic!("{e}"));
        let mut b = Batch::new();
        b.put("a", "k", b"v".to_vec());
        s.commit(b).unwrap_or_else(|e| panic!("{e}"));
    }
    let s = RedbStore::open(&path, TABLES).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.get("a", "k").ok().flatten(), Some(b"v".to_vec()));
}

#[derive(Clone, Debug)]
enum TestOp {
    Put(bool, String, Vec<u8>),
    Delete(bool, String),
}

fn arb_op() -> impl Strategy<Value = TestOp> {
    let key = "[a-c/]{0,4}";
    prop_oneof![
        (any::<bool>(), key, prop::collection::vec(any::<u8>(), 0..4)).prop_map(|(t, k, v)| TestOp::Put(t, k, v)),
        (any::<bool>(), key).prop_map(|(t, k)| TestOp::Delete(t, k)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The embedded store behaves exactly like the in-memory model.
    #[test]
    fn redb_matches_the_model(batches in prop::collection::vec(prop::collection::vec(arb_op(), 0..6), 0..8), prefix in "[a-c/]{0,2}") {
        let (_dir, stores) = both();
        for ops in &batches {
            for s in &stores {
                let mut b = Batch::new();
                for op in ops {
                    match op.clone() {
                        TestOp::Put(t, k, v) => { b.put(if t { "a" } else { "b" }, k, v); }
                        TestOp::Delete(t, k) => { b.delete(if t { "a" } else { "b" }, k); }
                    }
                }
                prop_assert!(s.commit(b).is_ok());
            }
        }
        for t in TABLES {
            let model = stores[0].scan_prefix(t, &prefix).ok();
            let real = stores[1].scan_prefix(t, &prefix).ok();
            prop_assert_eq!(model, real);
        }
    }
}
