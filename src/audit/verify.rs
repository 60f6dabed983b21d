//! Verification of a stored log: every hash re-computed from the stored bytes, sequence
//! continuity, every checkpoint (its hash, and its signature when the public key is
//! given), and optionally a checkpoint exported and kept elsewhere. Names the first bad
//! record.

use super::checkpoint::verify_signature;
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
        let hash = chain_hash(&prev, &rec.body);
        if rec.hash.as_slice() != hash.as_slice() {
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
