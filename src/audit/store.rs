//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a
//! committed transaction has been fsync'd. Records are append-only rows holding the
//! canonical bytes and their chain hash, plus columns extracted from the record for
//! the auditors' queries (the bytes are authoritative; the columns are an index).
//!
//! The auditors' index lives in a second SQLite file beside the log (`<name>.index.db`,
//! attached as `ix`), filled in large batches by a background indexer
//! ([`Store::index_pending`]) rather than in every commit: a commit then writes only the
//! log's own sequential pages. Each batch is stored as postings (see `postings`): one row
//! per distinct (column, value) in the batch listing the records that hold it, and one
//! row with the batch's bounds and every record's time — a quarter of the CPU of one row
//! per record in a table and seven B-trees (BENCHMARKS.md, eleventh round). Queries read
//! the indexed batches and the records not yet indexed (the tail after
//! `ix.progress.through`) in one snapshot, so every committed record is visible at once.
//! The index holds nothing that is not in the log: deleted, or found not to match the
//! log, it is rebuilt from the log.

use super::postings::{
    BatchBuilder, COLUMNS, decode_id_hashes, decode_offsets, decode_times, encode_id_hashes,
    encode_offsets, encode_times,
};
use super::record::{GENESIS, Record, chain_hash, encode};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::path::{Path, PathBuf};

/// WAL pages after which the writer checkpoints by itself (16 MiB of 4 KiB pages).
pub const WRITER_CHECKPOINT_PAGES: i64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("decision log store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("decision log store: {0}")]
    Corrupt(String),
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS records (
    seq            INTEGER PRIMARY KEY,
    id             TEXT NOT NULL,
    time_us        INTEGER NOT NULL,
    kind           TEXT NOT NULL,
    system         TEXT,
    sub            TEXT,
    section        TEXT,
    asset          TEXT,
    action         TEXT,
    decision       TEXT,
    reason         TEXT,
    tier           TEXT,
    policy_version TEXT,
    body           BLOB NOT NULL,
    hash           BLOB NOT NULL
);
DROP INDEX IF EXISTS records_time;
DROP INDEX IF EXISTS records_sub;
DROP INDEX IF EXISTS records_section;
DROP INDEX IF EXISTS records_system;
DROP INDEX IF EXISTS records_asset;
DROP INDEX IF EXISTS records_reason;
CREATE TABLE IF NOT EXISTS checkpoints (
    seq       INTEGER PRIMARY KEY,
    hash      BLOB NOT NULL,
    time_us   INTEGER NOT NULL,
    key_id    TEXT NOT NULL,
    signature BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash BLOB NOT NULL
);
"#;

/// The auditors' index (`SCHEMA_NAME` is `ix`, or `temp` for an empty stand-in): the
/// batches of records up to `progress.through`, each with its bounds and its records'
/// times (`postings::encode_times`) and id hashes (`postings::encode_id_hashes`), and each
/// batch's postings: for every (column, value)
/// key, the offsets of the batch's records that hold it (`postings::encode_offsets`).
/// Postings are keyed by batch first, so a batch's rows are appended at the end of the
/// B-tree and a query looks a key up batch by batch.
const INDEX_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS SCHEMA_NAME.batches (
    first_seq INTEGER PRIMARY KEY,
    last_seq  INTEGER NOT NULL,
    min_time  INTEGER NOT NULL,
    max_time  INTEGER NOT NULL,
    last_id   TEXT NOT NULL,
    times     BLOB NOT NULL,
    ids       BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS SCHEMA_NAME.postings (
    batch   INTEGER NOT NULL,
    key     TEXT NOT NULL,
    offsets BLOB NOT NULL,
    PRIMARY KEY (batch, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS SCHEMA_NAME.progress (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    through INTEGER NOT NULL
);
"#;

/// The columns a batch is built from: `seq`, `time_us`, `id`, then `postings::COLUMNS`.
const BATCH_COLUMNS: &str = "seq, time_us, id, sub, section, system, asset, action, decision, reason, tier, policy_version, kind";

/// Batches smaller than this are built again with the next records (see
/// [`Store::index_pending`]), so that however slowly records come, a year's log is a few
/// thousand batches for a query to look through, not one per indexer round.
pub const MIN_BATCH: u64 = 4096;

/// A stored batch's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchBounds {
    pub first_seq: u64,
    pub last_seq: u64,
    pub min_time: i64,
    pub max_time: i64,
}

/// The index file beside a log: `decisions.db` → `decisions.index.db`.
pub fn index_path(log: &Path) -> PathBuf {
    log.with_extension("index.db")
}

/// Attaches (creating if needed) the index file beside the log as `ix`, for writing.
fn attach_index(conn: &Connection, log: &Path) -> Result<(), StoreError> {
    conn.execute(
        "ATTACH DATABASE ?1 AS ix",
        [index_path(log).to_string_lossy()],
    )?;
    // The index can be rebuilt from the log: NORMAL durability (a crash may lose the last
    // batches, which are then indexed again), never a torn file.
    conn.pragma_update(Some("ix"), "journal_mode", "WAL")?;
    conn.pragma_update(Some("ix"), "synchronous", "NORMAL")?;
    conn.pragma_update(Some("ix"), "journal_size_limit", 64 * 1024 * 1024)?;
    create_index_schema(conn, "ix")
}

/// Creates the index's tables in `schema` where they are missing. Writes nothing when they
/// are there, so a store on a read-only filesystem still opens (and then fails to commit,
/// which the service reports as such). An index of the former layout (one row per record,
/// `entries`) is dropped and built again.
fn create_index_schema(conn: &Connection, schema: &str) -> Result<(), StoreError> {
    let former: bool = conn.query_row(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = 'entries')"
        ),
        [],
        |r| r.get(0),
    )?;
    if former {
        conn.execute_batch(&format!(
            "DROP TABLE {schema}.entries; DELETE FROM {schema}.progress;"
        ))?;
    }
    conn.execute_batch(&INDEX_SCHEMA.replace("SCHEMA_NAME", schema))?;
    let rows: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM {schema}.progress"),
        [],
        |r| r.get(0),
    )?;
    if rows == 0 {
        conn.execute(
            &format!("INSERT INTO {schema}.progress (id, through) VALUES (1, 0)"),
            [],
        )?;
    }
    Ok(())
}

/// Whether SQLite found a file not to be a database, or a damaged one.
fn is_damaged(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
            if matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// Deletes the index file and its WAL and shared-memory files.
fn remove_index_files(log: &Path) -> Result<(), StoreError> {
    let index = index_path(log);
    for suffix in ["", "-wal", "-shm"] {
        let mut name = index.clone().into_os_string();
        name.push(suffix);
        match std::fs::remove_file(&name) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Corrupt(format!(
                    "cannot remove the damaged index `{}`: {e}",
                    index.display()
                )));
            }
        }
    }
    Ok(())
}

/// The last committed record: where the next one chains from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// A stored row, as verification reads it: borrowed from SQLite's row, so reading the
/// whole log allocates nothing per record.
#[derive(Debug, Clone, Copy)]
pub struct StoredRecord<'a> {
    pub seq: u64,
    pub body: &'a [u8],
    pub hash: &'a [u8],
}

/// A signed checkpoint of (seq, hash, time).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub time_us: i64,
    pub key_id: String,
    pub signature: String,
}

/// See [`Store::snapshot`].
pub(crate) struct Snapshot<'a> {
    conn: &'a Connection,
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        // Nothing was written: releasing only ends the read.
        let _ = self.conn.execute_batch("RELEASE snapshot");
    }
}

pub struct Store {
    conn: Connection,
    /// Where the index is attached: `ix`, or `temp` when a read-only store has none.
    index: &'static str,
    /// [`MIN_BATCH`], or less for tests of several batches.
    min_batch: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

fn to32(v: &[u8]) -> Result<[u8; 32], StoreError> {
    v.try_into()
        .map_err(|_| StoreError::Corrupt(String::from("a stored hash is not 32 bytes")))
}

impl Store {
    /// Opens (creating if needed) the store for writing.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Checkpoints run on their own thread ([`Store::checkpoint`]); the writer checkpoints
        // only when the WAL passes this size, which lets SQLite restart the WAL from its
        // beginning under unbroken load (see `writer`).
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        if let Err(e) = attach_index(&conn, path) {
            if !is_damaged(&e) {
                return Err(e);
            }
            // The index is derived from the log: a damaged one is deleted and rebuilt,
            // never a reason not to serve.
            tracing::warn!(error = %e, "the decision log's index is damaged; rebuilding it from the log");
            let _ = conn.execute_batch("DETACH DATABASE ix");
            remove_index_files(path)?;
            attach_index(&conn, path)?;
        }
        let store = Store {
            conn,
            index: "ix",
            min_batch: MIN_BATCH,
        };
        store.repair_index()?;
        Ok(store)
    }

    /// Whether the index describes this log: its last entry is the log's record of that
    /// sequence number (or everything it covered was archived). An index copied from
    /// another log, or left from a log restored from an older backup, does not.
    fn index_matches_log(&self) -> Result<bool, StoreError> {
        let ix = self.index;
        let (through, entry, record): (i64, Option<String>, Option<String>) = self.conn.query_row(
            &format!(
                "SELECT p.through, (SELECT last_id FROM {ix}.batches WHERE last_seq = p.through), \
                 (SELECT id FROM main.records WHERE seq = p.through) FROM {ix}.progress AS p"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let anchor = i64::try_from(self.anchor()?.seq).unwrap_or(i64::MAX);
        Ok(through <= anchor || (entry.is_some() && entry == record))
    }

    /// Makes the index describe this log: starts it again when it does not, and drops
    /// batches of archived records (left when an archive stopped between the two files).
    fn repair_index(&self) -> Result<(), StoreError> {
        if !self.index_matches_log()? {
            tracing::warn!("the decision log's index does not match the log; rebuilding it");
            self.conn.execute_batch(
                "BEGIN; DELETE FROM ix.postings; DELETE FROM ix.batches; \
                 UPDATE ix.progress SET through = 0; COMMIT;",
            )?;
        }
        self.remove_batches_through(self.anchor()?.seq)
    }

    /// Removes the index's batches wholly at or before `seq` (archived records). A batch
    /// that reaches past it stays; queries skip its records up to the anchor.
    fn remove_batches_through(&self, seq: u64) -> Result<(), StoreError> {
        let ix = self.index;
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let left: bool = self.conn.query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM {ix}.batches WHERE last_seq <= ?1)"),
            [seq],
            |r| r.get(0),
        )?;
        if left {
            let tx = self.conn.unchecked_transaction()?;
            tx.execute(
                &format!(
                    "DELETE FROM {ix}.postings WHERE batch IN \
                     (SELECT first_seq FROM {ix}.batches WHERE last_seq <= ?1)"
                ),
                [seq],
            )?;
            tx.execute(
                &format!("DELETE FROM {ix}.batches WHERE last_seq <= ?1"),
                [seq],
            )?;
            tx.commit()?;
        }
        Ok(())
    }

    /// A connection for the indexer thread: reads the log, writes the index.
    pub fn open_for_indexing(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        attach_index(&conn, path)?;
        let store = Store {
            conn,
            index: "ix",
            min_batch: MIN_BATCH,
        };
        // Batches touch many index pages: keep some in memory across batches (16 MiB; more
        // was measurably faster only for stores of millions of records, and counts
        // against the memory target during a reload).
        store
            .conn
            .pragma_update(Some("ix"), "cache_size", -16_384)?;
        Ok(store)
    }

    /// Indexes up to `max` records after the index's `through` in one transaction on the
    /// index file, as one batch; returns how many. When the last batch is smaller than
    /// [`MIN_BATCH`], it is built again together with the new records (so batches stay
    /// large when records come slowly). The log is only read, and only while the rows are
    /// copied into memory: a long read of the log would keep SQLite from restarting the
    /// log's WAL, which then grows without bound under unbroken load.
    pub fn index_pending(&self, max: u64) -> Result<u64, StoreError> {
        let ix = self.index;
        let through = self.indexed_through()?;
        let anchor = self.anchor()?.seq;
        let last: Option<(i64, i64)> = self
            .conn
            .query_row(
                &format!(
                    "SELECT first_seq, last_seq FROM {ix}.batches ORDER BY first_seq DESC LIMIT 1"
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let regrow = last
            .map(|(f, l)| (u64::try_from(f).unwrap_or(0), u64::try_from(l).unwrap_or(0)))
            .filter(|&(f, l)| l == through && f > anchor && l + 1 - f < self.min_batch);
        let start = regrow.map_or(through, |(f, _)| f - 1);
        let mut builder = BatchBuilder::new();
        let mut last_id = String::new();
        {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {BATCH_COLUMNS} FROM main.records WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            let limit = max.saturating_add(through - start);
            let mut rows = stmt.query(params![
                i64::try_from(start).unwrap_or(i64::MAX),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ])?;
            while let Some(r) = rows.next()? {
                let text = |i: usize| -> Result<Option<&str>, StoreError> {
                    Ok(r.get_ref(i)?
                        .as_str_or_null()
                        .map_err(rusqlite::Error::from)?)
                };
                let mut values = [None; COLUMNS.len()];
                for (i, v) in values.iter_mut().enumerate() {
                    *v = text(3 + i)?;
                }
                let seq = u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0);
                let id = text(2)?.unwrap_or_default();
                builder
                    .push(seq, r.get(1)?, id, values)
                    .map_err(|e| StoreError::Corrupt(format!("indexing the log: {e}")))?;
                last_id.clear();
                last_id.push_str(id);
            }
        }
        let Some(batch) = builder.finish() else {
            return Ok(0);
        };
        let upto = batch.last_seq();
        if upto <= through {
            return Ok(0);
        }
        let (min_time, max_time) = batch.time_bounds().unwrap_or_default();
        let first = i64::try_from(batch.first_seq).unwrap_or(i64::MAX);
        let tx = self.conn.unchecked_transaction()?;
        if regrow.is_some() {
            tx.execute(
                &format!("DELETE FROM {ix}.postings WHERE batch = ?1"),
                [first],
            )?;
            tx.execute(
                &format!("DELETE FROM {ix}.batches WHERE first_seq = ?1"),
                [first],
            )?;
        }
        tx.execute(
            &format!(
                "INSERT INTO {ix}.batches (first_seq, last_seq, min_time, max_time, last_id, times, ids) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            ),
            params![
                first,
                i64::try_from(upto).unwrap_or(i64::MAX),
                min_time,
                max_time,
                last_id,
                encode_times(&batch.times),
                encode_id_hashes(&batch.id_hashes)
            ],
        )?;
        {
            let mut insert = tx.prepare_cached(&format!(
                "INSERT INTO {ix}.postings (batch, key, offsets) VALUES (?1, ?2, ?3)"
            ))?;
            for (key, offsets) in &batch.postings {
                insert.execute(params![first, key, encode_offsets(offsets)])?;
            }
        }
        // Another connection indexing the same records first (two indexers on one log)
        // would have moved `through`: then this batch is rolled back.
        let moved = tx.execute(
            &format!("UPDATE {ix}.progress SET through = ?1 WHERE through = ?2"),
            params![
                i64::try_from(upto).unwrap_or(i64::MAX),
                i64::try_from(through).unwrap_or(i64::MAX)
            ],
        )?;
        if moved == 0 {
            return Ok(0);
        }
        tx.commit()?;
        Ok(upto - through)
    }

    /// The index's batches that hold records after the anchor and times in
    /// `[from, until)` (either open), by first sequence number.
    pub(crate) fn batches(
        &self,
        from: Option<i64>,
        until: Option<i64>,
    ) -> Result<Vec<BatchBounds>, StoreError> {
        let ix = self.index;
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT first_seq, last_seq, min_time, max_time FROM {ix}.batches \
             WHERE last_seq > ?1 AND max_time >= ?2 AND min_time < ?3 ORDER BY first_seq"
        ))?;
        let anchor = i64::try_from(self.anchor()?.seq).unwrap_or(i64::MAX);
        let rows = stmt.query_map(
            params![anchor, from.unwrap_or(i64::MIN), until.unwrap_or(i64::MAX)],
            |r| {
                Ok(BatchBounds {
                    first_seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    last_seq: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                    min_time: r.get(2)?,
                    max_time: r.get(3)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One of a batch's per-record blobs (`times`, `ids`).
    fn batch_blob(&self, batch: &BatchBounds, column: &str) -> Result<Vec<u8>, StoreError> {
        let ix = self.index;
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {column} FROM {ix}.batches WHERE first_seq = ?1"
        ))?;
        Ok(
            stmt.query_row([i64::try_from(batch.first_seq).unwrap_or(i64::MAX)], |r| {
                r.get(0)
            })?,
        )
    }

    /// A batch's record times, by offset.
    pub(crate) fn batch_times(&self, batch: &BatchBounds) -> Result<Vec<i64>, StoreError> {
        let times = decode_times(&self.batch_blob(batch, "times")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if times.len() as u64 != batch.last_seq + 1 - batch.first_seq {
            return Err(StoreError::Corrupt(format!(
                "the index's batch from record {} lists {} times for {} records",
                batch.first_seq,
                times.len(),
                batch.last_seq + 1 - batch.first_seq
            )));
        }
        Ok(times)
    }

    /// A batch's record id hashes, by offset.
    pub(crate) fn batch_id_hashes(&self, batch: &BatchBounds) -> Result<Vec<u32>, StoreError> {
        decode_id_hashes(&self.batch_blob(batch, "ids")?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }

    /// A key's offsets in a batch (`None`: no record of the batch holds it).
    pub(crate) fn batch_postings(
        &self,
        batch: &BatchBounds,
        key: &str,
    ) -> Result<Option<Vec<u32>>, StoreError> {
        let ix = self.index;
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT offsets FROM {ix}.postings WHERE batch = ?1 AND key = ?2"
        ))?;
        let bytes: Option<Vec<u8>> = stmt
            .query_row(
                params![i64::try_from(batch.first_seq).unwrap_or(i64::MAX), key],
                |r| r.get(0),
            )
            .optional()?;
        bytes
            .map(|b| decode_offsets(&b).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Every key of one column in a batch (`column=value`), with its offsets.
    pub(crate) fn batch_column(
        &self,
        batch: &BatchBounds,
        column: &str,
    ) -> Result<Vec<(String, Vec<u32>)>, StoreError> {
        let ix = self.index;
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT key, offsets FROM {ix}.postings WHERE batch = ?1 AND key >= ?2 AND key < ?3"
        ))?;
        // Keys of the column run from `column=` up to `column>` ('>' follows '=').
        let rows = stmt.query_map(
            params![
                i64::try_from(batch.first_seq).unwrap_or(i64::MAX),
                format!("{column}="),
                format!("{column}>")
            ],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (key, bytes) = row?;
            let offsets = decode_offsets(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push((key, offsets));
        }
        Ok(out)
    }

    /// Reads in one snapshot until the guard is dropped: a query's batches, postings and
    /// tail then agree, whatever the writer and the indexer commit meanwhile.
    pub(crate) fn snapshot(&self) -> Result<Snapshot<'_>, StoreError> {
        self.conn.execute_batch("SAVEPOINT snapshot")?;
        Ok(Snapshot { conn: &self.conn })
    }

    /// The last record in the index.
    pub fn indexed_through(&self) -> Result<u64, StoreError> {
        let ix = self.index;
        let n: i64 =
            self.conn
                .query_row(&format!("SELECT through FROM {ix}.progress"), [], |r| {
                    r.get(0)
                })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Records committed but not yet indexed.
    pub fn index_lag(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            &format!(
                "SELECT COUNT(*) FROM main.records WHERE {}",
                self.not_indexed()
            ),
            [],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The SQL condition on `main.records` for the records not yet indexed (the tail
    /// queries read from the log itself).
    pub(crate) fn not_indexed(&self) -> String {
        format!("seq > (SELECT through FROM {}.progress)", self.index)
    }

    /// The schema the index is attached as (`ix`, or `temp` for an empty stand-in).
    pub(crate) fn index_schema(&self) -> &'static str {
        self.index
    }

    /// A connection for the checkpointer thread (no schema work; the writer made it).
    pub fn open_for_checkpoints(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_millis(100))?;
        Ok(Store {
            conn,
            index: "",
            min_batch: MIN_BATCH,
        })
    }

    /// Copies committed WAL frames into the database file without blocking the writer
    /// (SQLite's PASSIVE checkpoint); returns (frames in the WAL, frames copied).
    pub fn checkpoint(&self) -> Result<(i64, i64), StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })?)
    }

    /// Opens an existing store read-only (offline verification, queries).
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let index = index_path(path);
        if !index.exists() {
            return Store::without_index(conn);
        }
        if let Err(e) = conn.execute("ATTACH DATABASE ?1 AS ix", [index.to_string_lossy()]) {
            tracing::warn!(error = %e, "the decision log's index cannot be opened; not using it");
            return Store::without_index(conn);
        }
        let store = Store {
            conn,
            index: "ix",
            min_batch: MIN_BATCH,
        };
        match store.index_matches_log() {
            Ok(true) => return Ok(store),
            Ok(false) => {
                tracing::warn!("the decision log's index does not match the log; not using it");
            }
            Err(e) => {
                tracing::warn!(error = %e, "the decision log's index cannot be read; not using it");
            }
        }
        store.conn.execute_batch("DETACH DATABASE ix")?;
        Store::without_index(store.conn)
    }

    /// A read-only store with no usable index: an empty one in `temp`, so every record
    /// is read as not yet indexed (slower, still complete).
    fn without_index(conn: Connection) -> Result<Store, StoreError> {
        create_index_schema(&conn, "temp")?;
        Ok(Store {
            conn,
            index: "temp",
            min_batch: MIN_BATCH,
        })
    }

    /// Limits the database to `pages` pages (SQLite's `max_page_count`): a full disk, for
    /// tests. 0 restores the default.
    pub fn set_max_pages(&self, pages: u64) -> Result<(), StoreError> {
        let pages: i64 = if pages == 0 {
            1_073_741_823
        } else {
            i64::try_from(pages).unwrap_or(i64::MAX)
        };
        self.conn.pragma_update(None, "max_page_count", pages)?;
        Ok(())
    }

    /// Sets the size below which the last batch is built again with the next records
    /// ([`MIN_BATCH`] unless set): tests of several batches set it low.
    pub fn set_min_batch(&mut self, records: u64) {
        self.min_batch = records;
    }

    /// Refuses (or allows again) every write on this connection, as a read-only store does.
    pub fn set_query_only(&self, on: bool) -> Result<(), StoreError> {
        self.conn.pragma_update(None, "query_only", on)?;
        Ok(())
    }

    /// A (seq, hash) row from `sql`, if there is one.
    fn head_row(&self, sql: &str) -> Result<Option<Head>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows = stmt.query([])?;
        match rows.next()? {
            Some(r) => Ok(Some(Head {
                seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                hash: to32(&r.get::<_, Vec<u8>>(1)?)?,
            })),
            None => Ok(None),
        }
    }

    /// The anchor the chain starts from: genesis, or the last archived record.
    pub fn anchor(&self) -> Result<Head, StoreError> {
        Ok(self
            .head_row("SELECT seq, hash FROM anchor WHERE id = 1")?
            .unwrap_or(Head {
                seq: 0,
                hash: GENESIS,
            }))
    }

    /// The last committed record, or the anchor when the store is empty.
    pub fn head(&self) -> Result<Head, StoreError> {
        match self.head_row("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1")? {
            Some(h) => Ok(h),
            None => self.anchor(),
        }
    }

    /// Appends records after `head` in one transaction (one fsync); returns the new head.
    /// On error nothing is written and `head` still holds.
    pub fn append(&mut self, head: Head, records: &[Record]) -> Result<Head, StoreError> {
        // BEGIN and COMMIT as cached statements, not `Connection::transaction`: that parses
        // both again for every group, and the writer commits a thousand groups a second.
        // Deferred, as `transaction` began it: the first insert takes the write lock of the
        // log's file alone. `BEGIN IMMEDIATE` would take the write lock of every attached
        // file, the auditors' index too, and wait behind the indexer's transactions there.
        if !self.conn.is_autocommit() {
            // A failed group whose rollback failed too left its transaction open.
            self.conn.execute_batch("ROLLBACK")?;
        }
        self.conn.prepare_cached("BEGIN")?.execute([])?;
        let appended = self.insert(head, records).and_then(|next| {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(next)
        });
        if appended.is_err() && !self.conn.is_autocommit() {
            // Nothing of a failed group may stay: the next group starts from `head` again.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        appended
    }

    /// The inserts of [`Store::append`], inside its transaction.
    fn insert(&self, head: Head, records: &[Record]) -> Result<Head, StoreError> {
        let mut next = head;
        {
            let mut stmt = self.conn.prepare_cached(
                "INSERT INTO records (seq, id, time_us, kind, system, sub, section, asset, action, decision, reason, tier, policy_version, body, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            for r in records {
                let seq = next.seq + 1;
                let body = encode(seq, r);
                let hash = chain_hash(&next.hash, &body);
                stmt.execute(params![
                    i64::try_from(seq).unwrap_or(i64::MAX),
                    r.id,
                    r.time_us,
                    r.kind.as_str(),
                    r.system,
                    r.subject.as_ref().map(|s| s.sub.as_str()),
                    r.subject.as_ref().and_then(|s| s.section.as_deref()),
                    r.asset.as_ref().map(|a| a.id.as_str()),
                    r.action,
                    r.decision,
                    r.reason,
                    r.asset.as_ref().and_then(|a| a.tier.as_deref()),
                    r.policy_version,
                    body,
                    hash.as_slice(),
                ])?;
                next = Head { seq, hash };
            }
        }
        Ok(next)
    }

    pub fn add_checkpoint(&self, c: &Checkpoint) -> Result<(), StoreError> {
        let hash = hex::decode(&c.hash)
            .map_err(|_| StoreError::Corrupt(String::from("checkpoint hash is not hex")))?;
        let sig = hex::decode(&c.signature)
            .map_err(|_| StoreError::Corrupt(String::from("checkpoint signature is not hex")))?;
        self.conn.execute(
            "INSERT OR REPLACE INTO checkpoints (seq, hash, time_us, key_id, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![i64::try_from(c.seq).unwrap_or(i64::MAX), hash, c.time_us, c.key_id, sig],
        )?;
        Ok(())
    }

    pub fn checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, hash, time_us, key_id, signature FROM checkpoints ORDER BY seq",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Checkpoint {
                seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                hash: hex::encode(r.get::<_, Vec<u8>>(1)?),
                time_us: r.get(2)?,
                key_id: r.get(3)?,
                signature: hex::encode(r.get::<_, Vec<u8>>(4)?),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Calls `f` for every record in sequence order.
    pub fn for_each(&self, mut f: impl FnMut(StoredRecord<'_>) -> bool) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, body, hash FROM records ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let blob = |i: usize| -> Result<&[u8], StoreError> {
                Ok(row.get_ref(i)?.as_blob().map_err(rusqlite::Error::from)?)
            };
            let rec = StoredRecord {
                seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                body: blob(1)?,
                hash: blob(2)?,
            };
            if !f(rec) {
                break;
            }
        }
        Ok(())
    }

    /// Whether a record with this id is stored.
    pub fn contains(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.get(id)?.is_some())
    }

    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Removes records up to and including `seq` and makes (`seq`, `hash`) the anchor the
    /// chain continues from, in one transaction (retention; see `archive`).
    pub fn remove_through(&self, seq: u64, hash: &[u8; 32]) -> Result<(), StoreError> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            self.conn
                .execute("DELETE FROM main.records WHERE seq <= ?1", [seq])?;
            self.conn
                .execute("DELETE FROM main.checkpoints WHERE seq < ?1", [seq])?;
            self.conn.execute(
                "INSERT OR REPLACE INTO main.anchor (id, seq, hash) VALUES (1, ?1, ?2)",
                params![seq, hash.as_slice()],
            )?;
            Ok::<(), rusqlite::Error>(())
        })();
        match result {
            Ok(()) => {
                self.conn.execute_batch("COMMIT")?;
                // Then the index (another file, so another transaction): batches left by a
                // stop in between are never read (queries skip sequence numbers up to the
                // anchor) and are dropped at the next open.
                if self.index == "ix" {
                    self.remove_batches_through(u64::try_from(seq).unwrap_or(0))?;
                }
                Ok(())
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e.into())
            }
        }
    }

    /// The raw connection, for tests that tamper with the store.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}
