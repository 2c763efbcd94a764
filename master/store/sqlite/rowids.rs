//! The store thread's map of worker rowids, which ticks update the `workers` rows by, and
//! what a commit changes in it.

use std::collections::HashMap;

use rusqlite::Connection;

use super::fault::Result;

/// Row ids of the `workers` table by worker id: a tick updates each row by its rowid,
/// one B-tree descent instead of two (index, then table). Rowids of a table without an
/// INTEGER PRIMARY KEY stay put unless the database is vacuumed, which herd never does.
pub(super) type RowIds = HashMap<String, i64>;

pub(super) fn load_rowids(conn: &Connection) -> Result<RowIds> {
    let mut stmt = conn.prepare("SELECT id, rowid FROM workers")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// What a commit changes in the store thread's map of worker rowids: applied only once
/// the commit succeeded.
#[derive(Default)]
pub(super) struct RowIdChanges {
    /// Workers stored for the first time, with the rowid their INSERT gave back.
    pub(super) learned: Vec<(String, i64)>,
    /// Workers whose rows were deleted. SQLite may give the largest rowid again to the
    /// next insert, so a forgotten worker's entry would point at another worker's row
    /// (updates by rowid check the id too; this keeps the map from growing).
    pub(super) forgotten: Vec<String>,
}

impl RowIdChanges {
    /// Applies them to the map (the commit succeeded), forgotten last: a worker stored and
    /// forgotten in one commit is not kept.
    pub(super) fn apply(self, rowids: &mut RowIds) {
        rowids.extend(self.learned);
        for id in &self.forgotten {
            rowids.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::histogram::Histogram;
    use rusqlite::Connection;

    use herd::domain::WorkerState;

    use crate::store::sqlite::tests::{out, read_state, store_liveness, store_worker};
    use crate::store::{Change, Store};

    /// Workers first stored together in one commit, and one stored alone, each take the
    /// liveness row written for it (ticks update by the rowid the insert gave back).
    #[tokio::test]
    async fn liveness_lands_on_workers_stored_in_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herd.db");
        let (store, _) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
        tokio::join!(
            store_worker(&store, "w-a", "a"),
            store_worker(&store, "w-b", "b"),
            store_worker(&store, "w-c", "c"),
        );
        store_worker(&store, "w-d", "d").await;
        store_liveness(
            &store,
            &[("w-b", WorkerState::Active), ("w-d", WorkerState::Removed)],
        )
        .await;
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let state = |id| read_state(&conn, id).unwrap().unwrap().1;
        assert_eq!(
            ["w-a", "w-b", "w-c", "w-d"].map(state),
            ["Inactive", "Active", "Inactive", "Removed"]
        );
    }

    /// A forgotten worker's rowid may go to the next worker stored; a late liveness row of
    /// the forgotten one must not land on the newcomer's row.
    #[tokio::test]
    async fn a_forgotten_workers_rowid_does_not_lead_to_the_next_workers_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("herd.db");
        let (store, _) = Store::open(&path, out(&dir), Histogram::new([1.0])).unwrap();
        store_worker(&store, "w-a", "a").await;
        store_worker(&store, "w-b", "b").await;
        let rowid_of = |id: &str| -> i64 {
            Connection::open(&path)
                .unwrap()
                .query_row("SELECT rowid FROM workers WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        let forgotten = rowid_of("w-b");
        store
            .commit(Change::ForgetWorker { id: "w-b".into() })
            .await
            .unwrap();
        store_worker(&store, "w-c", "c").await;
        assert_eq!(rowid_of("w-c"), forgotten, "SQLite gave the rowid again");
        store_liveness(&store, &[("w-b", WorkerState::Active)]).await;
        drop(store);
        let conn = Connection::open(&path).unwrap();
        assert_eq!(
            read_state(&conn, "w-c").unwrap(),
            Some((false, "Inactive".into()))
        );
        assert_eq!(read_state(&conn, "w-b").unwrap(), None);
    }
}
