//! The auditors' index written per batch instead of per record: for each batch of records
//! the indexer takes from the log, which of them hold each value of each filtered column
//! (the value's *postings*), and every record's time. A batch of thousands of records
//! becomes a few thousand rows written in key order, where the index in `store` inserts
//! each record into eight B-trees at random places: a quarter of the indexer's CPU and
//! 2.4–3 ms off `Check`'s p99 in BENCHMARKS.md (eleventh round).
//!
//! This module is the format and the arithmetic of that index — building a batch, its
//! encoding, intersecting postings, paging in time order across batches — with no
//! storage: `store` keeps the batches in SQLite, `query` and `verify` read them.
//!
//! A batch covers consecutive sequence numbers (the log has no gaps), so a record is named
//! within its batch by its offset from the batch's first sequence number. Offsets in a
//! posting list are increasing and stored as varint deltas; times as zigzag varint deltas
//! (records are in commit order, and a clock step may move time backwards).

use std::collections::{BTreeMap, HashMap};

/// The columns with postings, in the order [`BatchBuilder::push`] takes their values: every
/// filter of an auditor's query. Record ids, unique, are not postings (one row each would
/// double the rows of a batch) but a hash per record ([`id_hash`]).
pub const COLUMNS: [&str; 10] = [
    "sub",
    "section",
    "system",
    "asset",
    "action",
    "decision",
    "reason",
    "tier",
    "policy_version",
    "kind",
];

/// The key of a value's postings: the column, `=`, the value. Column names hold no `=`, so
/// a key names one (column, value) whatever the value holds.
pub fn key(column: &str, value: &str) -> String {
    let mut k = String::with_capacity(column.len() + 1 + value.len());
    k.push_str(column);
    k.push('=');
    k.push_str(value);
    k
}

/// Why a batch cannot be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostingsError {
    #[error("record {got} does not follow record {after} in the batch")]
    NotConsecutive { after: u64, got: u64 },
    #[error("a batch holds at most {} records", u32::MAX)]
    TooLarge,
    #[error("a stored list of the auditors' index is truncated or malformed")]
    Malformed,
}

/// One batch of the index, being built or read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub first_seq: u64,
    /// Each record's time (µs), by offset.
    pub times: Vec<i64>,
    /// Each (column, value) key's offsets, increasing.
    pub postings: BTreeMap<String, Vec<u32>>,
    /// Each record's [`id_hash`], by offset.
    pub id_hashes: Vec<u32>,
}

/// A record id's 32-bit FNV-1a hash: a lookup by id reads a batch's hashes and then only
/// the records whose hash matches (rarely more than the one). FNV-1a is fixed by its
/// definition, so stored hashes never change meaning.
pub fn id_hash(id: &str) -> u32 {
    id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Id hashes as little-endian `u32`s.
pub fn encode_id_hashes(hashes: &[u32]) -> Vec<u8> {
    hashes.iter().flat_map(|h| h.to_le_bytes()).collect()
}

/// The inverse of [`encode_id_hashes`].
pub fn decode_id_hashes(bytes: &[u8]) -> Result<Vec<u32>, PostingsError> {
    if bytes.len() % 4 != 0 {
        return Err(PostingsError::Malformed);
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Builds a batch from records in sequence order.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    first_seq: u64,
    times: Vec<i64>,
    id_hashes: Vec<u32>,
    /// Hashed while building (most values recur: a lookup, no allocation), sorted once at
    /// the end.
    postings: HashMap<String, Vec<u32>, foldhash::fast::RandomState>,
    /// The key being looked up, reused.
    key: String,
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    /// Adds the next record: its id and its values in [`COLUMNS`] order (`None` where it
    /// has none, which no filter matches).
    pub fn push(
        &mut self,
        seq: u64,
        time_us: i64,
        id: &str,
        values: [Option<&str>; COLUMNS.len()],
    ) -> Result<(), PostingsError> {
        if self.times.is_empty() {
            self.first_seq = seq;
        }
        let expected = self.first_seq + self.times.len() as u64;
        if seq != expected {
            return Err(PostingsError::NotConsecutive {
                after: expected.wrapping_sub(1),
                got: seq,
            });
        }
        let offset = u32::try_from(self.times.len()).map_err(|_| PostingsError::TooLarge)?;
        self.times.push(time_us);
        self.id_hashes.push(id_hash(id));
        for (column, value) in COLUMNS.iter().zip(values) {
            if let Some(v) = value {
                self.key.clear();
                self.key.push_str(column);
                self.key.push('=');
                self.key.push_str(v);
                match self.postings.get_mut(self.key.as_str()) {
                    Some(list) => list.push(offset),
                    None => {
                        self.postings.insert(self.key.clone(), vec![offset]);
                    }
                }
            }
        }
        Ok(())
    }

    /// The batch, or `None` when no record was pushed.
    pub fn finish(self) -> Option<Batch> {
        if self.times.is_empty() {
            return None;
        }
        let mut postings: Vec<(String, Vec<u32>)> = self.postings.into_iter().collect();
        postings.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(Batch {
            first_seq: self.first_seq,
            times: self.times,
            postings: postings.into_iter().collect(),
            id_hashes: self.id_hashes,
        })
    }
}

impl Batch {
    /// The last sequence number the batch covers.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + (self.times.len() as u64).saturating_sub(1)
    }

    /// The earliest and the latest time in the batch (`None` if it is empty).
    pub fn time_bounds(&self) -> Option<(i64, i64)> {
        let min = self.times.iter().copied().min()?;
        let max = self.times.iter().copied().max()?;
        Some((min, max))
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(bytes: &[u8], at: &mut usize) -> Result<u64, PostingsError> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or(PostingsError::Malformed)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(PostingsError::Malformed)
}

/// Offsets (increasing) as varint deltas.
pub fn encode_offsets(offsets: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(offsets.len() + 4);
    let mut last = 0u32;
    for (i, &o) in offsets.iter().enumerate() {
        put_varint(&mut out, u64::from(if i == 0 { o } else { o - last }));
        last = o;
    }
    out
}

/// The inverse of [`encode_offsets`]; refuses a list that does not increase.
pub fn decode_offsets(bytes: &[u8]) -> Result<Vec<u32>, PostingsError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let delta = take_varint(bytes, &mut at)?;
        let value = match out.last() {
            None => delta,
            Some(_) if delta == 0 => return Err(PostingsError::Malformed),
            Some(&last) => u64::from(last) + delta,
        };
        out.push(u32::try_from(value).map_err(|_| PostingsError::Malformed)?);
    }
    Ok(out)
}

/// Times as zigzag varint deltas (a clock step makes a delta negative).
pub fn encode_times(times: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(times.len() * 3);
    let mut last = 0i64;
    for &t in times {
        let d = t.wrapping_sub(last);
        put_varint(&mut out, ((d << 1) ^ (d >> 63)) as u64);
        last = t;
    }
    out
}

/// The inverse of [`encode_times`].
pub fn decode_times(bytes: &[u8]) -> Result<Vec<i64>, PostingsError> {
    let mut out = Vec::with_capacity(bytes.len() / 2);
    let (mut at, mut last) = (0, 0i64);
    while at < bytes.len() {
        let z = take_varint(bytes, &mut at)?;
        let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
        last = last.wrapping_add(d);
        out.push(last);
    }
    Ok(out)
}

/// The offsets in every list (each increasing); all of `0..len` when there is no list.
pub fn intersect(lists: &[&[u32]], len: u32) -> Vec<u32> {
    let mut sorted: Vec<&[u32]> = lists.to_vec();
    // The shortest list drives: each of its offsets is looked for in the others.
    sorted.sort_by_key(|l| l.len());
    let Some((first, rest)) = sorted.split_first() else {
        return (0..len).collect();
    };
    let mut cursors = vec![0usize; rest.len()];
    first
        .iter()
        .copied()
        .filter(|&o| {
            rest.iter().zip(cursors.iter_mut()).all(|(list, at)| {
                // Lists only grow, so each search starts where the last one stopped.
                *at += list[*at..].partition_point(|&x| x < o);
                list.get(*at) == Some(&o)
            })
        })
        .collect()
}

/// Where a record stands in an auditor's page: time, ties broken by sequence number.
pub type Position = (i64, u64);

/// One page of the records matching a query, in time order, gathered batch by batch: the
/// batches are walked by their time bounds (newest first: latest time first), and the walk
/// stops once no batch left can hold a record that belongs in the page.
#[derive(Debug)]
pub struct Page {
    limit: usize,
    newest_first: bool,
    /// The page so far, best first.
    rows: Vec<Position>,
}

impl Page {
    pub fn new(limit: usize, newest_first: bool) -> Page {
        Page {
            limit,
            newest_first,
            rows: Vec::new(),
        }
    }

    /// The order to walk batches in, given each batch's (earliest, latest) time: the
    /// indexes of `bounds`, the batch that may hold the page's first record first.
    pub fn walk_order(&self, bounds: &[(i64, i64)]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..bounds.len()).collect();
        if self.newest_first {
            order.sort_by_key(|&i| std::cmp::Reverse(bounds[i].1));
        } else {
            order.sort_by_key(|&i| bounds[i].0);
        }
        order
    }

    /// Whether a batch with these time bounds — and so, walked in [`Page::walk_order`],
    /// every batch after it — can hold nothing for the page.
    pub fn is_complete_before(&self, bounds: (i64, i64)) -> bool {
        let Some(&(worst, _)) = self.rows.last().filter(|_| self.rows.len() >= self.limit) else {
            return self.limit == 0;
        };
        // Strictly: a record at the same time as the page's last could still precede it
        // by its sequence number.
        if self.newest_first {
            bounds.1 < worst
        } else {
            bounds.0 > worst
        }
    }

    /// Offers a batch's matching records (any order).
    pub fn offer(&mut self, found: impl IntoIterator<Item = Position>) {
        self.rows.extend(found);
        if self.newest_first {
            self.rows.sort_unstable_by(|a, b| b.cmp(a));
        } else {
            self.rows.sort_unstable();
        }
        self.rows.truncate(self.limit);
    }

    /// The page, best first.
    pub fn rows(&self) -> &[Position] {
        &self.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record's values with only a subject and a decision.
    fn values<'a>(sub: &'a str, decision: &'a str) -> [Option<&'a str>; COLUMNS.len()] {
        let mut v = [None; COLUMNS.len()];
        v[0] = Some(sub);
        v[5] = Some(decision);
        v
    }

    #[test]
    fn a_batch_lists_each_value_s_records_by_offset() {
        let mut b = BatchBuilder::new();
        b.push(41, 100, "r41", values("alice", "allow")).unwrap();
        b.push(42, 90, "r42", values("bob", "deny")).unwrap();
        b.push(43, 120, "r43", values("alice", "deny")).unwrap();
        let batch = b.finish().unwrap();
        assert_eq!(batch.first_seq, 41);
        assert_eq!(batch.last_seq(), 43);
        assert_eq!(batch.time_bounds(), Some((90, 120)));
        assert_eq!(batch.postings["sub=alice"], vec![0, 2]);
        assert_eq!(batch.postings["decision=deny"], vec![1, 2]);
        assert_eq!(batch.id_hashes[1], id_hash("r42"));
        assert_ne!(batch.id_hashes[0], batch.id_hashes[1]);
        // Columns without a value have no postings.
        assert!(!batch.postings.keys().any(|k| k.starts_with("asset=")));
    }

    #[test]
    fn a_batch_refuses_a_gap_or_a_repeat_in_the_sequence() {
        let mut b = BatchBuilder::new();
        b.push(7, 1, "x", values("a", "allow")).unwrap();
        assert_eq!(
            b.push(9, 2, "y", values("a", "allow")),
            Err(PostingsError::NotConsecutive { after: 7, got: 9 })
        );
        assert_eq!(
            b.push(7, 2, "y", values("a", "allow")),
            Err(PostingsError::NotConsecutive { after: 7, got: 7 })
        );
        assert!(BatchBuilder::new().finish().is_none());
    }

    #[test]
    fn id_hashes_are_fnv_1a_and_read_back_as_written() {
        // FNV-1a's published test values: "" and "a".
        assert_eq!(id_hash(""), 0x811c_9dc5);
        assert_eq!(id_hash("a"), 0xe40c_292c);
        let hashes = [
            0,
            1,
            u32::MAX,
            id_hash("019a0000-0000-7000-8000-000000000001"),
        ];
        assert_eq!(
            decode_id_hashes(&encode_id_hashes(&hashes)).unwrap(),
            hashes
        );
        assert_eq!(decode_id_hashes(&[1, 2, 3]), Err(PostingsError::Malformed));
    }

    #[test]
    fn a_key_names_one_column_and_value_whatever_the_value_holds() {
        assert_eq!(key("sub", "a=b"), "sub=a=b");
        assert_ne!(key("sub", "section=x"), key("section", "x"));
    }

    #[test]
    fn offsets_and_times_read_back_as_written() {
        let offsets = [0u32, 1, 5, 200, 70_000, u32::MAX];
        assert_eq!(decode_offsets(&encode_offsets(&offsets)).unwrap(), offsets);
        assert_eq!(decode_offsets(&[]).unwrap(), Vec::<u32>::new());
        // A clock step back, far-apart times, the extremes.
        let times = [
            1_780_000_000_000_000,
            1_780_000_000_000_007,
            1_779_999_999_000_000,
            0,
            -5,
            i64::MAX,
            i64::MIN,
        ];
        assert_eq!(decode_times(&encode_times(&times)).unwrap(), times);
    }

    #[test]
    fn a_truncated_or_non_increasing_list_is_malformed() {
        let mut bytes = encode_offsets(&[3, 300]);
        bytes.pop();
        assert_eq!(decode_offsets(&bytes), Err(PostingsError::Malformed));
        // 3, then a delta of 0: a repeated offset.
        assert_eq!(decode_offsets(&[3, 0]), Err(PostingsError::Malformed));
        // More than 64 bits of varint.
        assert_eq!(decode_times(&[0xff; 11]), Err(PostingsError::Malformed));
        // Past u32.
        let mut big = Vec::new();
        put_varint(&mut big, u64::from(u32::MAX) + 1);
        assert_eq!(decode_offsets(&big), Err(PostingsError::Malformed));
    }

    #[test]
    fn intersecting_keeps_the_offsets_in_every_list() {
        let a: &[u32] = &[1, 3, 5, 7, 9, 11];
        let b: &[u32] = &[2, 3, 4, 9, 11, 12];
        let c: &[u32] = &[0, 3, 11];
        assert_eq!(intersect(&[a, b, c], 13), vec![3, 11]);
        assert_eq!(intersect(&[a], 13), a.to_vec());
        assert_eq!(intersect(&[a, &[]], 13), Vec::<u32>::new());
        assert_eq!(intersect(&[], 4), vec![0, 1, 2, 3]);
    }

    /// Each batch's (earliest, latest) time.
    fn time_bounds(batches: &[Vec<Position>]) -> Vec<(i64, i64)> {
        batches
            .iter()
            .map(|b| {
                let t = b.iter().map(|p| p.0);
                (t.clone().min().unwrap(), t.max().unwrap())
            })
            .collect()
    }

    /// Random batches (fixed seed): times mostly rising with jitter, ties and clock steps;
    /// random lists to intersect. Each checked against the plain answer.
    #[test]
    fn random_batches_page_and_intersect_as_the_plain_answer() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(6);
        for _ in 0..200 {
            let (mut seq, mut clock) = (1u64, 1_000i64);
            let batches: Vec<Vec<Position>> = (0..rng.gen_range(1..6))
                .map(|_| {
                    (0..rng.gen_range(1..20))
                        .map(|_| {
                            clock += rng.gen_range(0..3);
                            if rng.gen_ratio(1, 30) {
                                clock -= rng.gen_range(0..40);
                            }
                            seq += 1;
                            (clock - rng.gen_range(0..2), seq)
                        })
                        .collect()
                })
                .collect();
            let bounds = time_bounds(&batches);
            let newest_first = rng.gen_bool(0.5);
            let limit = rng.gen_range(0..30);
            let mut all: Vec<Position> = batches.iter().flatten().copied().collect();
            all.sort_unstable();
            if newest_first {
                all.reverse();
            }
            all.truncate(limit);
            let mut page = Page::new(limit, newest_first);
            for i in page.walk_order(&bounds) {
                if page.is_complete_before(bounds[i]) {
                    break;
                }
                page.offer(batches[i].iter().copied());
            }
            assert_eq!(page.rows(), all);

            let lists: Vec<Vec<u32>> = (0..rng.gen_range(0..4))
                .map(|_| (0..64u32).filter(|_| rng.gen_ratio(1, 3)).collect())
                .collect();
            let refs: Vec<&[u32]> = lists.iter().map(Vec::as_slice).collect();
            let plain: Vec<u32> = (0..64u32)
                .filter(|o| lists.iter().all(|l| l.contains(o)))
                .collect();
            assert_eq!(intersect(&refs, 64), plain);
        }
    }

    /// Pages gathered batch by batch, stopping where `is_complete_before` says, equal the
    /// page sorted from every record at once, in both directions, across batches whose time
    /// ranges overlap (a clock step) and with ties in time.
    #[test]
    fn a_page_gathered_by_batch_is_the_page_of_all_records() {
        // Three batches of (time, seq); the second's times overlap both others.
        let batches: Vec<Vec<Position>> = vec![
            vec![(10, 1), (12, 2), (12, 3), (15, 4)],
            vec![(14, 5), (9, 6), (15, 7), (30, 8)],
            vec![(20, 9), (21, 10), (15, 11), (22, 12)],
        ];
        let bounds = time_bounds(&batches);
        let mut all: Vec<Position> = batches.iter().flatten().copied().collect();
        for newest_first in [true, false] {
            all.sort_unstable();
            if newest_first {
                all.reverse();
            }
            for limit in 0..=all.len() + 1 {
                let mut page = Page::new(limit, newest_first);
                let mut walked = 0;
                for i in page.walk_order(&bounds) {
                    if page.is_complete_before(bounds[i]) {
                        break;
                    }
                    walked += 1;
                    page.offer(batches[i].iter().copied());
                }
                let expected: Vec<Position> = all.iter().copied().take(limit).collect();
                assert_eq!(
                    page.rows(),
                    expected,
                    "limit {limit}, newest first {newest_first}"
                );
                if limit == 1 {
                    // The first batch walked holds the page's record: no other is read.
                    assert_eq!(walked, 1, "newest first {newest_first}");
                }
            }
        }
    }
}
