//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`, so a
//! committed transaction has been fsync'd. Records are append-only rows holding the
//! canonical bytes and their chain hash, plus columns extracted from the record for
//! the auditors' queries (the bytes are authoritative; the columns are an index).

use super::record::{GENESIS, Record, chain_hash, encode};
use rusqlite::{Connection, OpenFlags, params};
use std::path::Path;

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
    id             TEXT NOT NULL UNIQUE,
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
CREATE INDEX IF NOT EXISTS records_time ON records (time_us);
CREATE INDEX IF NOT EXISTS records_sub ON records (sub, time_us);
CREATE INDEX IF NOT EXISTS records_section ON records (section, time_us);
CREATE INDEX IF NOT EXISTS records_system ON records (system, time_us);
CREATE INDEX IF NOT EXISTS records_asset ON records (asset, time_us);
CREATE INDEX IF NOT EXISTS records_reason ON records (reason, time_us);
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

/// The last committed record: where the next one chains from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// A stored row, as verification reads it.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub seq: u64,
    pub body: Vec<u8>,
    pub hash: Vec<u8>,
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

pub struct Store {
    conn: Connection,
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
        Ok(Store { conn })
    }

    /// A connection for the checkpointer thread (no schema work; the writer made it).
    pub fn open_for_checkpoints(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_millis(100))?;
        Ok(Store { conn })
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
        Ok(Store { conn })
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
        let tx = self.conn.transaction()?;
        let mut next = head;
        {
            let mut stmt = tx.prepare_cached(
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
        tx.commit()?;
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
    pub fn for_each(&self, mut f: impl FnMut(StoredRecord) -> bool) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, body, hash FROM records ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let rec = StoredRecord {
                seq: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                body: row.get(1)?,
                hash: row.get(2)?,
            };
            if !f(rec) {
                break;
            }
        }
        Ok(())
    }

    /// Whether a record with this id is stored.
    pub fn contains(&self, id: &str) -> Result<bool, StoreError> {
        let n: i64 =
            self.conn
                .query_row("SELECT COUNT(*) FROM records WHERE id = ?1", [id], |r| {
                    r.get(0)
                })?;
        Ok(n > 0)
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
                .execute("DELETE FROM records WHERE seq <= ?1", [seq])?;
            self.conn
                .execute("DELETE FROM checkpoints WHERE seq < ?1", [seq])?;
            self.conn.execute(
                "INSERT OR REPLACE INTO anchor (id, seq, hash) VALUES (1, ?1, ?2)",
                params![seq, hash.as_slice()],
            )?;
            Ok::<(), rusqlite::Error>(())
        })();
        match result {
            Ok(()) => {
                self.conn.execute_batch("COMMIT")?;
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
