//! The batch job's prediction store: one SQLite file (WAL journal), predictions keyed by the
//! model's SHA-256 and the input's id. Rows land in transactions, so a crash loses at most
//! the batch in flight and never leaves half a row; the primary key makes a re-run unable
//! to duplicate one.

use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashSet;
use std::path::Path;

const SCHEMA_VERSION: i64 = 1;

pub struct Store {
    db: Connection,
}

/// One finished input: its JSON outputs, or why it failed.
pub type Row = (String, Result<String, String>);

fn sql(e: rusqlite::Error) -> String {
    format!("prediction store: {e}")
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, String> {
        let db = Connection::open(path)
            .map_err(|e| format!("cannot open the store {}: {e}", path.display()))?;
        // Another process (a reader, a second shard on the same file) may hold the lock
        // for a moment.
        db.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(sql)?;
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if version > SCHEMA_VERSION {
            return Err(format!(
                "{} was written by a newer edgepredict (store schema {version})",
                path.display()
            ));
        }
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS models (
               name TEXT PRIMARY KEY,
               sha256 TEXT NOT NULL,
               updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             );
             CREATE TABLE IF NOT EXISTS predictions (
               model_sha256 TEXT NOT NULL,
               input_id TEXT NOT NULL,
               outputs TEXT NOT NULL,
               created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
               PRIMARY KEY (model_sha256, input_id)
             ) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS failures (
               model_sha256 TEXT NOT NULL,
               input_id TEXT NOT NULL,
               error TEXT NOT NULL,
               PRIMARY KEY (model_sha256, input_id)
             ) WITHOUT ROWID;",
        )
        .map_err(sql)?;
        db.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql)?;
        Ok(Store { db })
    }

    /// Records that the job `name` now runs the model `sha256`. When the job ran another
    /// model before, that model's rows are stale and are deleted (unless another job still
    /// uses it); returns how many were.
    pub fn begin(&mut self, name: &str, sha256: &str) -> Result<usize, String> {
        let tx = self.db.transaction().map_err(sql)?;
        let old: Option<String> = tx
            .query_row(
                "SELECT sha256 FROM models WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)?;
        let mut dropped = 0;
        if let Some(old) = old.filter(|o| o != sha256) {
            let shared: i64 = tx
                .query_row(
                    "SELECT count(*) FROM models WHERE sha256 = ?1 AND name != ?2",
                    params![old, name],
                    |r| r.get(0),
                )
                .map_err(sql)?;
            if shared == 0 {
                dropped = tx
                    .execute(
                        "DELETE FROM predictions WHERE model_sha256 = ?1",
                        params![old],
                    )
                    .map_err(sql)?;
                tx.execute("DELETE FROM failures WHERE model_sha256 = ?1", params![old])
                    .map_err(sql)?;
            }
        }
        tx.execute(
            "INSERT INTO models (name, sha256) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET sha256 = excluded.sha256,
               updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
            params![name, sha256],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(dropped)
    }

    /// Ids that already have a prediction from this model.
    pub fn stored_ids(&self, sha256: &str) -> Result<HashSet<String>, String> {
        let mut q = self
            .db
            .prepare("SELECT input_id FROM predictions WHERE model_sha256 = ?1")
            .map_err(sql)?;
        let ids = q
            .query_map(params![sha256], |r| r.get::<_, String>(0))
            .map_err(sql)?
            .collect::<Result<HashSet<_>, _>>()
            .map_err(sql)?;
        Ok(ids)
    }

    /// Writes finished inputs in one transaction: a prediction replaces an earlier failure
    /// of the same input; a failure is recorded for a later look (and retried next run).
    pub fn write(&mut self, sha256: &str, rows: &[Row]) -> Result<(), String> {
        let tx = self.db.transaction().map_err(sql)?;
        {
            let mut ok = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO predictions (model_sha256, input_id, outputs)
                     VALUES (?1, ?2, ?3)",
                )
                .map_err(sql)?;
            let mut clear = tx
                .prepare_cached("DELETE FROM failures WHERE model_sha256 = ?1 AND input_id = ?2")
                .map_err(sql)?;
            let mut failed = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO failures (model_sha256, input_id, error)
                     VALUES (?1, ?2, ?3)",
                )
                .map_err(sql)?;
            for (id, r) in rows {
                match r {
                    Ok(json) => {
                        ok.execute(params![sha256, id, json]).map_err(sql)?;
                        clear.execute(params![sha256, id]).map_err(sql)?;
                    }
                    Err(e) => {
                        failed.execute(params![sha256, id, e]).map_err(sql)?;
                    }
                }
            }
        }
        tx.commit().map_err(sql)
    }

    /// The stored outputs (JSON) of one input under this model.
    pub fn get(&self, sha256: &str, id: &str) -> Result<Option<String>, String> {
        self.db
            .query_row(
                "SELECT outputs FROM predictions WHERE model_sha256 = ?1 AND input_id = ?2",
                params![sha256, id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_and_invalidate() {
        let dir = std::env::temp_dir().join(format!("ep-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sqlite");
        let _ = std::fs::remove_file(&path);
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.begin("m", "aaa").unwrap(), 0);
        s.write(
            "aaa",
            &[
                ("1".into(), Ok("{}".into())),
                ("2".into(), Err("bad".into())),
            ],
        )
        .unwrap();
        // Writing the same id again replaces, never duplicates.
        s.write("aaa", &[("1".into(), Ok("{\"x\":1}".into()))])
            .unwrap();
        drop(s);
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.begin("m", "aaa").unwrap(), 0);
        assert_eq!(s.stored_ids("aaa").unwrap().len(), 1);
        assert_eq!(s.get("aaa", "1").unwrap().as_deref(), Some("{\"x\":1}"));
        // A new model for the same job drops the old model's rows.
        assert_eq!(s.begin("m", "bbb").unwrap(), 1);
        assert!(s.stored_ids("aaa").unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
