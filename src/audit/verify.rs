//! Verification of a stored log: every hash re-computed from the stored bytes, sequence
//! continuity, every checkpoint (its hash, and its signature when the public key is
//! given), and optionally a checkpoint exported and kept elsewhere. Names the first bad
//! record.

use super::checkpoint::verify_signature;
use super::record::chain_hash;
use super::store::{Checkpoint, LIVE, Store, StoreError};
use std::collections::BTreeMap;

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The first record that cannot be trusted.
    pub seq: u64,
    pub what: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<String>,
    pub checkpoints: usize,
    pub checkpoints_signature_checked: bool,
    pub problem: Option<Problem>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// Verifies the whole store. `public_key`: the checkpoint key (signatures are checked
/// only with it). `external`: a checkpoint exported earlier and kept elsewhere.
pub fn verify(
    store: &Store,
    public_key: Option<&[u8]>,
    external: Option<&Checkpoint>,
    mut progress: impl FnMut(u64),
) -> Result<Report, StoreError> {
    let anchor = store.anchor()?;
    let mut checkpoints: BTreeMap<u64, Checkpoint> = store
        .checkpoints()?
        .into_iter()
        .map(|c| (c.seq, c))
        .collect();
    let stored_checkpoints = checkpoints.len();
    let mut problem: Option<Problem> = None;
    // Signatures first: a forged checkpoint is a problem wherever it points.
    if let Some(key) = public_key {
        for c in checkpoints.values() {
            if !verify_signature(c, key) {
                problem = Some(Problem {
                    seq: c.seq,
                    what: format!(
                        "the checkpoint at record {} has an invalid signature (forged or made with another key)",
                        c.seq
                    ),
                });
                break;
            }
        }
    }
    if let Some(e) = external {
        if public_key.is_some_and(|k| !verify_signature(e, k)) && problem.is_none() {
            problem = Some(Problem {
                seq: e.seq,
                what: String::from("the exported checkpoint's signature is invalid"),
            });
        }
        checkpoints.entry(e.seq).or_insert_with(|| e.clone());
    }
    let mut prev = anchor.hash;
    let mut expected = anchor.seq + 1;
    let mut last_good_checkpoint = anchor.seq;
    let mut records = 0u64;
    let mut first_seq = None;
    let mut last: Option<(u64, [u8; 32])> = None;
    store.for_each(|rec| {
        if problem.is_some() {
            return false;
        }
        if rec.seq != expected {
            problem = Some(Problem {
                seq: expected,
                what: if rec.seq > expected {
                    format!("record {expected} is missing (the next stored record is {})", rec.seq)
                } else {
                    format!("record {} is out of sequence (expected {expected})", rec.seq)
                },
            });
            return false;
        }
        let hash = chain_hash(&prev, rec.body);
        if rec.hash != hash.as_slice() {
            problem = Some(Problem {
                seq: rec.seq,
                what: format!("record {}: its bytes or its place in the chain were changed (hash mismatch)", rec.seq),
            });
            return false;
        }
        if let Some(c) = checkpoints.get(&rec.seq) {
            if c.hash != hex::encode(hash) {
                problem = Some(Problem {
                    seq: last_good_checkpoint + 1,
                    what: format!(
                        "records {}..={} were rewritten: the chain at {} differs from its signed checkpoint",
                        last_good_checkpoint + 1,
                        rec.seq,
                        rec.seq
                    ),
                });
                return false;
            }
            last_good_checkpoint = rec.seq;
        }
        if first_seq.is_none() {
            first_seq = Some(rec.seq);
        }
        prev = hash;
        expected += 1;
        records += 1;
        last = Some((rec.seq, hash));
        if records % 100_000 == 0 {
            progress(records);
        }
        true
    })?;
    if problem.is_none() {
        let end = last.map_or(anchor.seq, |(s, _)| s);
        if let Some((&seq, _)) = checkpoints.range(end + 1..).next() {
            problem = Some(Problem {
                seq: end + 1,
                what: format!(
                    "the log ends at record {end} but a checkpoint covers record {seq}: records were removed from the end"
                ),
            });
        }
    }
    progress(records);
    Ok(Report {
        records,
        first_seq,
        last_seq: last.map(|(s, _)| s),
        last_hash: last.map(|(_, h)| hex::encode(h)),
        checkpoints: stored_checkpoints,
        checkpoints_signature_checked: public_key.is_some(),
        problem,
    })
}

/// The query columns of a record as its stored bytes give them, in `INDEX_COLUMNS` order
/// after `seq`.
#[derive(serde::Deserialize)]
struct Stated {
    id: String,
    time_us: i64,
    kind: String,
    system: Option<String>,
    subject: Option<StatedSubject>,
    asset: Option<StatedAsset>,
    action: Option<String>,
    decision: Option<String>,
    reason: Option<String>,
    policy_version: Option<String>,
}

#[derive(serde::Deserialize)]
struct StatedSubject {
    sub: String,
    section: Option<String>,
}

#[derive(serde::Deserialize)]
struct StatedAsset {
    id: String,
    tier: Option<String>,
}

/// The names of the query columns after `seq`, for messages.
const COLUMN_NAMES: [&str; 12] = [
    "id",
    "time_us",
    "kind",
    "system",
    "sub",
    "section",
    "asset",
    "action",
    "decision",
    "reason",
    "tier",
    "policy_version",
];

impl Stated {
    fn columns(self) -> [Option<String>; 12] {
        let (sub, section) = self
            .subject
            .map_or((None, None), |s| (Some(s.sub), s.section));
        let (asset, tier) = self.asset.map_or((None, None), |a| (Some(a.id), a.tier));
        [
            Some(self.id),
            Some(self.time_us.to_string()),
            Some(self.kind),
            self.system,
            sub,
            section,
            asset,
            self.action,
            self.decision,
            self.reason,
            tier,
            self.policy_version,
        ]
    }
}

/// What [`verify_columns`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ColumnsReport {
    pub records: u64,
    /// Records found in the index (the rest are read from the log by queries).
    pub indexed: u64,
    pub problem: Option<Problem>,
}

/// Checks what the chain does not cover: that every record's query columns — in the log
/// and in the auditors' index — say what its stored bytes say, and that the index holds
/// exactly the records up to its `through`. Altered columns could hide a record from a
/// filtered query; this names the first such record. Run after [`verify`], which vouches
/// for the bytes.
pub fn verify_columns(
    store: &Store,
    mut progress: impl FnMut(u64),
) -> Result<ColumnsReport, StoreError> {
    let ix = store.index_schema();
    let conn = store.connection();
    let through: u64 = store.indexed_through()?;
    let cols = |t: &str| {
        COLUMN_NAMES
            .iter()
            .map(|c| format!("{t}.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT r.seq, r.body, {}, e.seq, {} FROM main.records AS r \
         LEFT JOIN {ix}.entries AS e ON e.seq = r.seq ORDER BY r.seq",
        cols("r"),
        cols("e")
    ))?;
    let text = |v: rusqlite::types::Value| match v {
        rusqlite::types::Value::Null => None,
        rusqlite::types::Value::Integer(i) => Some(i.to_string()),
        rusqlite::types::Value::Real(f) => Some(f.to_string()),
        rusqlite::types::Value::Text(s) => Some(s),
        rusqlite::types::Value::Blob(b) => Some(hex::encode(b)),
    };
    let mut rows = stmt.query([])?;
    let (mut records, mut indexed) = (0u64, 0u64);
    let mut problem = None;
    while let Some(row) = rows.next()? {
        let seq = u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0);
        let body: Vec<u8> = row.get(1)?;
        let found = |what: String| Some(Problem { seq, what });
        let Ok(stated) = serde_json::from_slice::<Stated>(&body) else {
            problem = found(format!("record {seq}: its stored bytes are not a record"));
            break;
        };
        let stated = stated.columns();
        let in_index = row.get::<_, Option<i64>>(14)?.is_some();
        // The log's columns start at 2, the index's (when the record is indexed) at 15.
        let places = [("the log's", 2, true), ("the index's", 15, in_index)];
        'columns: for (i, name) in COLUMN_NAMES.iter().enumerate() {
            for (place, first, _) in places.iter().filter(|(_, _, present)| *present) {
                let value = text(row.get(first + i)?);
                if value != stated[i] {
                    problem = found(format!(
                        "record {seq}: {place} `{name}` column says {value:?}, its bytes say {:?}",
                        stated[i]
                    ));
                    break 'columns;
                }
            }
        }
        if problem.is_some() {
            break;
        }
        if in_index != (seq <= through) {
            problem = found(if in_index {
                format!("record {seq}: indexed, but the index says it covers only up to {through}")
            } else {
                format!(
                    "record {seq}: missing from the index, which says it covers up to {through}"
                )
            });
            break;
        }
        records += 1;
        indexed += u64::from(in_index);
        if records % 100_000 == 0 {
            progress(records);
        }
    }
    if problem.is_none() {
        // An entry whose record is not in the log (and was not archived).
        let stray: Option<i64> = conn.query_row(
            &format!(
                "SELECT MIN(seq) FROM {ix}.entries WHERE {LIVE} \
                 AND seq NOT IN (SELECT seq FROM main.records)"
            ),
            [],
            |r| r.get(0),
        )?;
        if let Some(seq) = stray {
            let seq = u64::try_from(seq).unwrap_or(0);
            problem = Some(Problem {
                seq,
                what: format!("the index lists record {seq}, which is not in the log"),
            });
        }
    }
    progress(records);
    Ok(ColumnsReport {
        records,
        indexed,
        problem,
    })
}
