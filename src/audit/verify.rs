//! Verification of a stored log: every hash re-computed from the stored bytes, sequence
//! continuity, every checkpoint (its hash, and its signature when the public key is
//! given), and optionally a checkpoint exported and kept elsewhere. Names the first bad
//! record.

use super::checkpoint::verify_signature;
use super::postings::{BatchBuilder, COLUMNS, decode_id_hashes, decode_offsets, decode_times};
use super::record::chain_hash;
use super::store::{Checkpoint, Store, StoreError};
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

/// The query columns of a record as its stored bytes give them.
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

/// A batch of the auditors' index as stored.
struct StoredBatch {
    first_seq: u64,
    last_seq: u64,
    min_time: i64,
    max_time: i64,
    last_id: String,
    times: Vec<u8>,
    ids: Vec<u8>,
}

/// Checks what the chain does not cover: that every record's query columns — in the log
/// and in the auditors' index — say what its stored bytes say, and that the index holds
/// exactly the records up to its `through`. Altered columns could hide a record from a
/// filtered query; this names the first such record. Run after [`verify`], which vouches
/// for the bytes. Each of the index's batches is built again from the records' bytes and
/// compared with the stored one.
pub fn verify_columns(
    store: &Store,
    mut progress: impl FnMut(u64),
) -> Result<ColumnsReport, StoreError> {
    let ix = store.index_schema();
    let conn = store.connection();
    let through: u64 = store.indexed_through()?;
    let anchor = store.anchor()?.seq;
    let batches: Vec<StoredBatch> = {
        let mut stmt = conn.prepare(&format!(
            "SELECT first_seq, last_seq, min_time, max_time, last_id, times, ids FROM {ix}.batches \
             WHERE last_seq > ?1 ORDER BY first_seq"
        ))?;
        let rows = stmt.query_map([i64::try_from(anchor).unwrap_or(i64::MAX)], |r| {
            Ok(StoredBatch {
                first_seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                last_seq: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                min_time: r.get(2)?,
                max_time: r.get(3)?,
                last_id: r.get(4)?,
                times: r.get(5)?,
                ids: r.get(6)?,
            })
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let mut problem = batches_cover(&batches, anchor, through);
    let cols = COLUMN_NAMES
        .iter()
        .map(|c| format!("r.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut stmt = conn.prepare(&format!(
        "SELECT r.seq, r.body, {cols} FROM main.records AS r ORDER BY r.seq"
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
    let mut next_batch = batches.iter().peekable();
    let mut building: Option<(&StoredBatch, BatchBuilder)> = None;
    while problem.is_none()
        && let Some(row) = rows.next()?
    {
        let seq = u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0);
        let body: Vec<u8> = row.get(1)?;
        let found = |what: String| Some(Problem { seq, what });
        let Ok(stated) = serde_json::from_slice::<Stated>(&body) else {
            problem = found(format!("record {seq}: its stored bytes are not a record"));
            break;
        };
        let (time_us, kind, id) = (stated.time_us, stated.kind.clone(), stated.id.clone());
        let stated = stated.columns();
        for (i, name) in COLUMN_NAMES.iter().enumerate() {
            let value = text(row.get(2 + i)?);
            if value != stated[i] {
                problem = found(format!(
                    "record {seq}: the log's `{name}` column says {value:?}, its bytes say {:?}",
                    stated[i]
                ));
                break;
            }
        }
        if problem.is_some() {
            break;
        }
        if building.is_none()
            && let Some(b) = next_batch.next_if(|b| b.first_seq <= seq && seq <= b.last_seq)
        {
            building = Some((b, BatchBuilder::new()));
        }
        if let Some((batch, builder)) = &mut building {
            // In `postings::COLUMNS` order, from the bytes.
            let by_name = |name: &str| {
                COLUMN_NAMES
                    .iter()
                    .position(|c| *c == name)
                    .and_then(|i| stated[i].as_deref())
            };
            let mut values = [None; COLUMNS.len()];
            for (v, column) in values.iter_mut().zip(COLUMNS) {
                *v = match column {
                    "kind" => Some(kind.as_str()),
                    other => by_name(other),
                };
            }
            if let Err(e) = builder.push(seq, time_us, &id, values) {
                problem = found(format!("record {seq}: {e}"));
                break;
            }
            indexed += 1;
            if seq == batch.last_seq {
                let (batch, builder) = building.take().unwrap_or_else(|| unreachable!());
                problem = compare_batch(store, batch, builder, &id)?;
            }
        }
        records += 1;
        if records % 100_000 == 0 {
            progress(records);
        }
    }
    if problem.is_none()
        && let Some((batch, _)) = building
            .take()
            .or(next_batch.next().map(|b| (b, BatchBuilder::new())))
    {
        problem = Some(Problem {
            seq: batch.first_seq,
            what: format!(
                "the index lists records {}–{}, which are not all in the log",
                batch.first_seq, batch.last_seq
            ),
        });
    }
    progress(records);
    Ok(ColumnsReport {
        records,
        indexed,
        problem,
    })
}

/// Whether the batches follow one another from the anchor up to `through`, with nothing
/// after it.
fn batches_cover(batches: &[StoredBatch], anchor: u64, through: u64) -> Option<Problem> {
    let mut expected: Option<u64> = None;
    for b in batches {
        if b.last_seq < b.first_seq || b.min_time > b.max_time {
            return Some(Problem {
                seq: b.first_seq,
                what: format!("the index's batch from record {} is malformed", b.first_seq),
            });
        }
        if b.first_seq > through {
            return Some(Problem {
                seq: b.first_seq,
                what: format!(
                    "record {}: indexed, but the index says it covers only up to {through}",
                    b.first_seq
                ),
            });
        }
        if expected.is_some_and(|e| e != b.first_seq) {
            let seq = expected.unwrap_or_default().min(b.first_seq);
            return Some(Problem {
                seq,
                what: format!("record {seq}: the index's batches do not follow one another here"),
            });
        }
        expected = Some(b.last_seq + 1);
    }
    let covered = expected.map_or(anchor, |e| e - 1);
    let first = batches.first().map_or(anchor + 1, |b| b.first_seq);
    if through > anchor && first > anchor + 1 {
        return Some(Problem {
            seq: anchor + 1,
            what: format!(
                "record {}: missing from the index, which says it covers up to {through}",
                anchor + 1
            ),
        });
    }
    match covered.cmp(&through.max(anchor)) {
        std::cmp::Ordering::Less => Some(Problem {
            seq: covered + 1,
            what: format!(
                "record {}: missing from the index, which says it covers up to {through}",
                covered + 1
            ),
        }),
        std::cmp::Ordering::Greater => Some(Problem {
            seq: through + 1,
            what: format!(
                "record {}: indexed, but the index says it covers only up to {through}",
                through + 1
            ),
        }),
        std::cmp::Ordering::Equal => None,
    }
}

/// The first position where two lists differ, counting a missing entry as different.
fn first_difference<T: PartialEq>(a: &[T], b: &[T]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))
}

/// Compares a stored batch with the one built from its records' bytes (`last_id`: the
/// id of its last record). Records of a batch before the anchor (archived) are not
/// compared.
fn compare_batch(
    store: &Store,
    stored: &StoredBatch,
    built: BatchBuilder,
    last_id: &str,
) -> Result<Option<Problem>, StoreError> {
    let Some(built) = built.finish() else {
        return Ok(None);
    };
    // Offsets in the stored batch of the records compared (after an archive's cut).
    let skip = u32::try_from(built.first_seq - stored.first_seq).unwrap_or(u32::MAX);
    let at = |offset: u32, what: String| {
        let seq = built.first_seq + u64::from(offset);
        Some(Problem {
            seq,
            what: format!("record {seq}: {what}"),
        })
    };
    // Per record, from the archive's cut on: times, then id hashes (a malformed list reads
    // as empty, and so differs at its first record).
    let times = decode_times(&stored.times).unwrap_or_default();
    let ids = decode_id_hashes(&stored.ids).unwrap_or_default();
    let differs = first_difference(&built.times, times.get(skip as usize..).unwrap_or_default())
        .map(|o| (o, "time of it"))
        .or(first_difference(
            &built.id_hashes,
            ids.get(skip as usize..).unwrap_or_default(),
        )
        .map(|o| (o, "hash of its id")));
    if let Some((o, what)) = differs {
        return Ok(at(
            o as u32,
            format!("the index's {what} differs from its bytes'"),
        ));
    }
    let (min, max) = times
        .iter()
        .fold((i64::MAX, i64::MIN), |(a, b), &t| (a.min(t), b.max(t)));
    if (min, max) != (stored.min_time, stored.max_time) || stored.last_id != last_id {
        return Ok(at(
            u32::try_from(stored.last_seq - built.first_seq).unwrap_or(0),
            String::from("the index's bounds of its batch differ from the records'"),
        ));
    }
    let mut keys: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    {
        let conn = store.connection();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT key, offsets FROM {}.postings WHERE batch = ?1",
            store.index_schema()
        ))?;
        let mut rows = stmt.query([i64::try_from(stored.first_seq).unwrap_or(i64::MAX)])?;
        while let Some(r) = rows.next()? {
            let key: String = r.get(0)?;
            let bytes = r.get_ref(1)?.as_bytes().map_err(rusqlite::Error::from)?;
            let Ok(offsets) = decode_offsets(bytes) else {
                return Ok(at(0, format!("the index's list of `{key}` is malformed")));
            };
            let kept: Vec<u32> = offsets
                .into_iter()
                .filter(|&o| o >= skip)
                .map(|o| o - skip)
                .collect();
            if !kept.is_empty() {
                keys.insert(key, kept);
            }
        }
    }
    // The first record (by offset) listed under a key its bytes do not hold, or not
    // listed under one they do.
    let mut first: Option<(u32, String)> = None;
    let names = keys
        .keys()
        .chain(built.postings.keys())
        .collect::<std::collections::BTreeSet<_>>();
    for key in names {
        let (s, b) = (
            keys.get(key).map(Vec::as_slice).unwrap_or_default(),
            built
                .postings
                .get(key)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        );
        // Both lists increase: a binary search each.
        let only_stored = s.iter().find(|o| b.binary_search(o).is_err()).copied();
        let only_built = b.iter().find(|o| s.binary_search(o).is_err()).copied();
        let column = key.split('=').next().unwrap_or_default();
        for (o, what) in [
            (
                only_stored,
                format!("the index's `{column}` lists it under `{key}`, its bytes do not"),
            ),
            (
                only_built,
                format!("the index's `{column}` does not list it under `{key}`, its bytes do"),
            ),
        ] {
            if let Some(o) = o
                && first.as_ref().is_none_or(|(f, _)| o < *f)
            {
                first = Some((o, what));
            }
        }
    }
    Ok(first.and_then(|(o, what)| at(o, what)))
}
