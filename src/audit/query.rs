//! The auditors' queries over the store: filters, paging in time order, export in
//! chunks, summaries. Every filter is a bound parameter on an indexed column.
//!
//! Each query reads two parts in one statement (one snapshot): the index's entries (up to
//! its `through`, joined back to the log for the bytes) and the records not yet indexed
//! (the tail after `through`, read from the log by sequence number). Entries of archived
//! records — sequence numbers up to the log's anchor — are skipped.

use super::store::{LIVE, Store, StoreError};
use rusqlite::types::Value as SqlValue;

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
    for (column, value) in [
        ("sub", &f.sub),
        ("section", &f.section),
        ("system", &f.system),
        ("asset", &f.asset),
        ("action", &f.action),
        ("decision", &f.decision),
        ("reason", &f.reason),
        ("tier", &f.tier),
        ("policy_version", &f.policy_version),
        ("kind", &f.kind),
    ] {
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
        let (mut clause, mut params) = where_clause(filter);
        if let Some(c) = cursor {
            params.push(SqlValue::Integer(c.time_us));
            params.push(SqlValue::Integer(i64::try_from(c.seq).unwrap_or(i64::MAX)));
            // A row value comparison: SQLite walks the index from the cursor.
            clause.push_str(&format!(
                " AND (time_us, seq) {} (?{}, ?{})",
                if oldest_first { ">" } else { "<" },
                params.len() - 1,
                params.len()
            ));
        }
        params.push(SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        let dir = if oldest_first { "ASC" } else { "DESC" };
        let (ix, n) = (self.index_schema(), params.len());
        let tail = self.not_indexed();
        // The first page of each part, merged: the index walks `(column, time_us)` from the
        // cursor; the tail is short and read in sequence order. Joining on the id as well
        // keeps an entry from ever returning another record's bytes.
        let sql = format!(
            "SELECT {ROW_COLUMNS} FROM (\
               SELECT r.seq, r.id, r.time_us, r.kind, r.body, r.hash FROM \
                 (SELECT seq, id FROM {ix}.entries WHERE {LIVE} AND {clause} \
                  ORDER BY time_us {dir}, seq {dir} LIMIT ?{n}) AS e \
                 JOIN main.records AS r ON r.seq = e.seq AND r.id = e.id \
               UNION ALL \
               SELECT {ROW_COLUMNS} FROM main.records \
                 WHERE {tail} AND {clause}) \
             ORDER BY time_us {dir}, seq {dir} LIMIT ?{n}"
        );
        let mut stmt = self.connection().prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params), row_from)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// One record by id.
    pub fn get(&self, id: &str) -> Result<Option<Row>, StoreError> {
        let ix = self.index_schema();
        let tail = self.not_indexed();
        let mut stmt = self.connection().prepare_cached(&format!(
            "SELECT {ROW_COLUMNS} FROM main.records \
               WHERE seq IN (SELECT seq FROM {ix}.entries WHERE id = ?1) AND id = ?1 \
             UNION ALL \
             SELECT {ROW_COLUMNS} FROM main.records \
               WHERE {tail} AND id = ?1 \
             LIMIT 1"
        ))?;
        let mut rows = stmt.query([id])?;
        match rows.next()? {
            Some(r) => Ok(Some(row_from(r)?)),
            None => Ok(None),
        }
    }

    /// The last record recorded before `before_us` (retention's cut), if any.
    pub fn last_seq_before(&self, before_us: i64) -> Result<Option<u64>, StoreError> {
        let ix = self.index_schema();
        let tail = self.not_indexed();
        let seq: Option<i64> = self.connection().query_row(
            &format!(
                "SELECT MAX(s) FROM (\
                   SELECT MAX(seq) AS s FROM {ix}.entries WHERE {LIVE} AND time_us < ?1 \
                   UNION ALL \
                   SELECT MAX(seq) FROM main.records \
                     WHERE {tail} AND time_us < ?1)"
            ),
            [before_us],
            |r| r.get(0),
        )?;
        Ok(seq.map(to_u64))
    }

    /// Counts of matching records grouped by `by`.
    pub fn summarize(&self, filter: &Filter, by: SummaryBy) -> Result<Vec<SummaryRow>, StoreError> {
        let (clause, params) = where_clause(filter);
        let key = by.expression();
        let ix = self.index_schema();
        let tail = self.not_indexed();
        let columns = "time_us, section, asset, reason, decision";
        let sql = format!(
            "SELECT {key} AS k, SUM(decision = 'allow'), SUM(decision = 'deny'), COUNT(*) FROM (\
               SELECT {columns} FROM {ix}.entries WHERE {LIVE} AND {clause} \
               UNION ALL \
               SELECT {columns} FROM main.records \
                 WHERE {tail} AND {clause}) \
             GROUP BY k ORDER BY k"
        );
        let mut stmt = self.connection().prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
            Ok(SummaryRow {
                key: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                allow: to_u64(r.get::<_, Option<i64>>(1)?.unwrap_or(0)),
                deny: to_u64(r.get::<_, Option<i64>>(2)?.unwrap_or(0)),
                total: to_u64(r.get(3)?),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}
