//! The auditors' queries over the store: filters, paging in time order, export in
//! chunks, summaries.
//!
//! Each query reads two parts in one snapshot: the index's batches up to its `through`
//! and the records not yet indexed (the tail after `through`, read from the log by
//! sequence number). In each batch the postings of every filter are intersected and the
//! matches placed by their times; batches are walked by their time bounds until none can
//! add to the page (`postings::Page`), and only the page's records are read from the log
//! — with every filter applied again, so an index that does not match the log can hide a
//! record (which `verify --index` names) but never return one that does not match.
//! Records of archived batches — sequence numbers up to the log's anchor — are skipped.

use super::postings::{Page, Position, id_hash, intersect, key};
use super::store::{BatchBounds, Store, StoreError};
use rusqlite::types::Value as SqlValue;
use std::collections::BTreeMap;

/// All fields optional (`None` = any).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Filter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_us: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until_us: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// A record as read back: its sequence, id, time, kind, stored bytes and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub seq: u64,
    pub id: String,
    pub time_us: i64,
    pub kind: String,
    pub body: Vec<u8>,
    pub hash: Vec<u8>,
}

/// Where a page ends: records are ordered by recorded time, ties (and clock steps) broken
/// by sequence number, so every index `(column, time_us)` — which SQLite extends with the
/// row id, `seq` — yields a page in order without sorting the matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub time_us: i64,
    pub seq: u64,
}

impl Row {
    /// The cursor that continues after this row.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            time_us: self.time_us,
            seq: self.seq,
        }
    }
}

/// What a summary counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryBy {
    /// Calendar day in JST.
    Day,
    Section,
    Asset,
    Reason,
    Decision,
}

impl SummaryBy {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(SummaryBy::Day),
            "section" => Some(SummaryBy::Section),
            "asset" => Some(SummaryBy::Asset),
            "reason" => Some(SummaryBy::Reason),
            "decision" => Some(SummaryBy::Decision),
            _ => None,
        }
    }

    fn expression(self) -> &'static str {
        match self {
            // JST is UTC+9 without daylight saving.
            SummaryBy::Day => "date(time_us / 1000000 + 32400, 'unixepoch')",
            SummaryBy::Section => "COALESCE(section, '')",
            SummaryBy::Asset => "COALESCE(asset, '')",
            SummaryBy::Reason => "COALESCE(reason, '')",
            SummaryBy::Decision => "COALESCE(decision, '')",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SummaryRow {
    pub key: String,
    pub allow: u64,
    pub deny: u64,
    pub total: u64,
}

impl Filter {
    /// The postings keys of the filters on columns (the time range is not one).
    fn keys(&self) -> Vec<String> {
        self.columns()
            .into_iter()
            .filter_map(|(column, value)| value.as_deref().map(|v| key(column, v)))
            .collect()
    }

    fn columns(&self) -> [(&'static str, &Option<String>); 10] {
        [
            ("sub", &self.sub),
            ("section", &self.section),
            ("system", &self.system),
            ("asset", &self.asset),
            ("action", &self.action),
            ("decision", &self.decision),
            ("reason", &self.reason),
            ("tier", &self.tier),
            ("policy_version", &self.policy_version),
            ("kind", &self.kind),
        ]
    }

    fn holds_time(&self, time_us: i64) -> bool {
        self.from_us.is_none_or(|t| time_us >= t) && self.until_us.is_none_or(|t| time_us < t)
    }
}

fn where_clause(f: &Filter) -> (String, Vec<SqlValue>) {
    let mut parts: Vec<String> = Vec::new();
    let mut params: Vec<SqlValue> = Vec::new();
    if let Some(t) = f.from_us {
        params.push(SqlValue::Integer(t));
        parts.push(format!("time_us >= ?{}", params.len()));
    }
    if let Some(t) = f.until_us {
        params.push(SqlValue::Integer(t));
        parts.push(format!("time_us < ?{}", params.len()));
    }
    for (column, value) in f.columns() {
        if let Some(v) = value {
            params.push(SqlValue::Text(v.clone()));
            parts.push(format!("{column} = ?{}", params.len()));
        }
    }
    let clause = if parts.is_empty() {
        String::from("1 = 1")
    } else {
        parts.join(" AND ")
    };
    (clause, params)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

const ROW_COLUMNS: &str = "seq, id, time_us, kind, body, hash";

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        seq: to_u64(r.get(0)?),
        id: r.get(1)?,
        time_us: r.get(2)?,
        kind: r.get(3)?,
        body: r.get(4)?,
        hash: r.get(5)?,
    })
}

/// A batch's records that match a filter's keys, each with its offset: the intersection
/// of the keys' postings (every record when there is no key; none when a key is absent).
fn batch_matches(
    store: &Store,
    batch: &BatchBounds,
    keys: &[String],
) -> Result<Vec<u32>, StoreError> {
    let mut lists = Vec::with_capacity(keys.len());
    for k in keys {
        match store.batch_postings(batch, k)? {
            Some(list) => lists.push(list),
            None => return Ok(Vec::new()),
        }
    }
    let refs: Vec<&[u32]> = lists.iter().map(Vec::as_slice).collect();
    let len = u32::try_from(batch.last_seq + 1 - batch.first_seq).unwrap_or(u32::MAX);
    Ok(intersect(&refs, len))
}

/// Where each of a batch's matching records stands (time, seq), skipping records up to the
/// anchor and outside the filter's time range.
fn batch_positions(
    store: &Store,
    batch: &BatchBounds,
    filter: &Filter,
    keys: &[String],
    anchor: u64,
) -> Result<Vec<Position>, StoreError> {
    let offsets = batch_matches(store, batch, keys)?;
    if offsets.is_empty() {
        return Ok(Vec::new());
    }
    let times = store.batch_times(batch)?;
    Ok(offsets
        .into_iter()
        .filter_map(|o| {
            let seq = batch.first_seq + u64::from(o);
            let time = *times.get(o as usize)?;
            (seq > anchor && filter.holds_time(time)).then_some((time, seq))
        })
        .collect())
}

impl Store {
    /// One page of records matching `filter` in time order (newest first unless
    /// `oldest_first`), after `cursor`.
    pub fn query(
        &self,
        filter: &Filter,
        cursor: Option<Cursor>,
        oldest_first: bool,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let _snapshot = self.snapshot()?;
        let after = |p: &Position| match cursor {
            None => true,
            Some(c) if oldest_first => *p > (c.time_us, c.seq),
            Some(c) => *p < (c.time_us, c.seq),
        };
        let mut page = Page::new(limit, !oldest_first);
        // The tail, from the log.
        let (clause, params) = where_clause(filter);
        {
            let mut stmt = self.connection().prepare_cached(&format!(
                "SELECT time_us, seq FROM main.records WHERE {} AND {clause}",
                self.not_indexed()
            ))?;
            let rows = stmt.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                Ok((r.get::<_, i64>(0)?, to_u64(r.get(1)?)))
            })?;
            let tail: Vec<Position> = rows.collect::<Result<_, _>>()?;
            page.offer(tail.into_iter().filter(|p| after(p)));
        }
        // The batches, by their time bounds, those before the cursor left out.
        let keys = filter.keys();
        let anchor = self.anchor()?.seq;
        let batches: Vec<BatchBounds> = self
            .batches(filter.from_us, filter.until_us)?
            .into_iter()
            .filter(|b| match cursor {
                None => true,
                Some(c) if oldest_first => b.max_time >= c.time_us,
                Some(c) => b.min_time <= c.time_us,
            })
            .collect();
        let bounds: Vec<(i64, i64)> = batches.iter().map(|b| (b.min_time, b.max_time)).collect();
        for i in page.walk_order(&bounds) {
            if page.is_complete_before(bounds[i]) {
                break;
            }
            let found = batch_positions(self, &batches[i], filter, &keys, anchor)?;
            page.offer(found.into_iter().filter(|p| after(p)));
        }
        // The page's records, with every filter applied again (see the module's doc).
        let mut stmt = self.connection().prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM main.records WHERE seq = ?{} AND {clause}",
            params.len() + 1
        ))?;
        let mut out = Vec::with_capacity(page.rows().len());
        for &(_, seq) in page.rows() {
            let mut all = params.clone();
            all.push(SqlValue::Integer(i64::try_from(seq).unwrap_or(i64::MAX)));
            let mut rows = stmt.query(rusqlite::params_from_iter(all))?;
            if let Some(r) = rows.next()? {
                out.push(row_from(r)?);
            }
        }
        Ok(out)
    }

    /// One record by id.
    pub fn get(&self, id: &str) -> Result<Option<Row>, StoreError> {
        let _snapshot = self.snapshot()?;
        let by_seq = |seq: u64| -> Result<Option<Row>, StoreError> {
            let mut stmt = self.connection().prepare_cached(&format!(
                "SELECT {ROW_COLUMNS} FROM main.records WHERE seq = ?1 AND id = ?2"
            ))?;
            let mut rows = stmt.query(rusqlite::params![
                i64::try_from(seq).unwrap_or(i64::MAX),
                id
            ])?;
            Ok(match rows.next()? {
                Some(r) => Some(row_from(r)?),
                None => None,
            })
        };
        let tail: Option<i64> = {
            let mut stmt = self.connection().prepare_cached(&format!(
                "SELECT seq FROM main.records WHERE {} AND id = ?1 LIMIT 1",
                self.not_indexed()
            ))?;
            let mut rows = stmt.query([id])?;
            match rows.next()? {
                Some(r) => Some(r.get(0)?),
                None => None,
            }
        };
        if let Some(seq) = tail {
            return by_seq(to_u64(seq));
        }
        // The batches nearest the time in the id first (decision ids are UUIDv7, which
        // begin with the millisecond they were made, within moments of the record's
        // time), newest first otherwise; in each, the records whose id hash matches.
        let anchor = self.anchor()?.seq;
        let hash = id_hash(id);
        let near = uuid::Uuid::parse_str(id)
            .ok()
            .and_then(|u| u.get_timestamp())
            .map(|t| {
                let (secs, nanos) = t.to_unix();
                i64::try_from(secs)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000)
                    + i64::from(nanos / 1000)
            });
        let mut batches = self.batches(None, None)?;
        batches.reverse();
        if let Some(t) = near {
            batches.sort_by_key(|b| {
                b.min_time
                    .saturating_sub(t)
                    .max(t.saturating_sub(b.max_time))
                    .max(0)
            });
        }
        for batch in &batches {
            for (o, h) in self.batch_id_hashes(batch)?.into_iter().enumerate() {
                let seq = batch.first_seq + o as u64;
                if h == hash
                    && seq > anchor
                    && let Some(row) = by_seq(seq)?
                {
                    return Ok(Some(row));
                }
            }
        }
        Ok(None)
    }

    /// The last record recorded before `before_us` (retention's cut), if any.
    pub fn last_seq_before(&self, before_us: i64) -> Result<Option<u64>, StoreError> {
        let _snapshot = self.snapshot()?;
        let tail: Option<i64> = self.connection().query_row(
            &format!(
                "SELECT MAX(seq) FROM main.records WHERE {} AND time_us < ?1",
                self.not_indexed()
            ),
            [before_us],
            |r| r.get(0),
        )?;
        let mut last = tail.map(to_u64);
        let anchor = self.anchor()?.seq;
        for batch in self.batches(None, Some(before_us))? {
            let in_batch = if batch.max_time < before_us {
                Some(batch.last_seq)
            } else {
                let times = self.batch_times(&batch)?;
                times
                    .iter()
                    .rposition(|&t| t < before_us)
                    .map(|o| batch.first_seq + o as u64)
            };
            last = last.max(in_batch.filter(|&s| s > anchor));
        }
        Ok(last)
    }

    /// Counts of matching records grouped by `by`.
    pub fn summarize(&self, filter: &Filter, by: SummaryBy) -> Result<Vec<SummaryRow>, StoreError> {
        let _snapshot = self.snapshot()?;
        let mut counts: BTreeMap<String, SummaryRow> = BTreeMap::new();
        let mut add = |key: String, allow: u64, deny: u64, total: u64| {
            let row = counts.entry(key.clone()).or_insert(SummaryRow {
                key,
                allow: 0,
                deny: 0,
                total: 0,
            });
            row.allow += allow;
            row.deny += deny;
            row.total += total;
        };
        // The tail, grouped by SQLite.
        let (clause, params) = where_clause(filter);
        {
            let sql = format!(
                "SELECT {} AS k, SUM(decision = 'allow'), SUM(decision = 'deny'), COUNT(*) \
                 FROM main.records WHERE {} AND {clause} GROUP BY k",
                by.expression(),
                self.not_indexed()
            );
            let mut stmt = self.connection().prepare(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
            while let Some(r) = rows.next()? {
                add(
                    r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                    to_u64(r.get::<_, Option<i64>>(1)?.unwrap_or(0)),
                    to_u64(r.get::<_, Option<i64>>(2)?.unwrap_or(0)),
                    to_u64(r.get(3)?),
                );
            }
        }
        // The batches, counted from their postings.
        let keys = filter.keys();
        let anchor = self.anchor()?.seq;
        for batch in self.batches(filter.from_us, filter.until_us)? {
            let len = (batch.last_seq + 1 - batch.first_seq) as usize;
            let mut chosen = vec![false; len];
            for (_, seq) in batch_positions(self, &batch, filter, &keys, anchor)? {
                chosen[(seq - batch.first_seq) as usize] = true;
            }
            if !chosen.contains(&true) {
                continue;
            }
            let marks = |key: &str| -> Result<Vec<bool>, StoreError> {
                let mut m = vec![false; len];
                for o in self.batch_postings(&batch, key)?.unwrap_or_default() {
                    if let Some(v) = m.get_mut(o as usize) {
                        *v = true;
                    }
                }
                Ok(m)
            };
            let (allow, deny) = (marks("decision=allow")?, marks("decision=deny")?);
            let count = |offsets: &mut dyn Iterator<Item = usize>| {
                let (mut a, mut d, mut t) = (0u64, 0u64, 0u64);
                for o in offsets {
                    a += u64::from(allow[o]);
                    d += u64::from(deny[o]);
                    t += 1;
                }
                (a, d, t)
            };
            let column = match by {
                SummaryBy::Day => {
                    let times = self.batch_times(&batch)?;
                    let mut days: BTreeMap<String, Vec<usize>> = BTreeMap::new();
                    for (o, _) in chosen.iter().enumerate().filter(|(_, c)| **c) {
                        days.entry(jst_day(times[o])).or_default().push(o);
                    }
                    for (day, offsets) in days {
                        let (a, d, t) = count(&mut offsets.into_iter());
                        add(day, a, d, t);
                    }
                    continue;
                }
                SummaryBy::Section => "section",
                SummaryBy::Asset => "asset",
                SummaryBy::Reason => "reason",
                SummaryBy::Decision => "decision",
            };
            // Records without a value count under "", as the tail's COALESCE does.
            let mut unvalued = chosen.clone();
            for (k, offsets) in self.batch_column(&batch, column)? {
                let value = k[column.len() + 1..].to_string();
                let mut hit = offsets
                    .into_iter()
                    .map(|o| o as usize)
                    .filter(|&o| o < len && chosen[o])
                    .inspect(|&o| unvalued[o] = false)
                    .collect::<Vec<_>>()
                    .into_iter();
                let (a, d, t) = count(&mut hit);
                if t > 0 {
                    add(value, a, d, t);
                }
            }
            let (a, d, t) = count(
                &mut unvalued
                    .iter()
                    .enumerate()
                    .filter(|(_, u)| **u)
                    .map(|(o, _)| o),
            );
            if t > 0 {
                add(String::new(), a, d, t);
            }
        }
        Ok(counts.into_values().collect())
    }
}

/// The calendar day in JST (UTC+9, no daylight saving) of a time in µs, as SQLite's
/// `date(…, 'unixepoch')` writes it for the tail.
fn jst_day(time_us: i64) -> String {
    let seconds = time_us.div_euclid(1_000_000) + 9 * 3600;
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}
