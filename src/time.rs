//! Time as the city speaks it: calendar dates and timestamps in JST (Asia/Tokyo).
//!
//! Japan has kept UTC+09:00 without daylight saving since 1951, so a fixed offset is
//! exact for every date a policy can name; no time-zone database is needed. Instants are
//! kept in UTC; JST is only for reading and showing.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};

/// A point in time, in UTC.
pub type Instant = DateTime<Utc>;

/// The JST offset (+09:00).
pub fn jst() -> FixedOffset {
    // 9 * 3600 is always inside the ±24h range that `east_opt` accepts.
    FixedOffset::east_opt(9 * 3600).unwrap_or_else(|| Utc.fix())
}

/// Parses a policy time: a calendar date (`2026-04-01`, meaning 00:00 JST of that day) or an
/// RFC 3339 timestamp; a timestamp without an offset is read as JST.
pub fn parse_policy_time(text: &str) -> Option<Instant> {
    let text = text.trim();
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return jst_midnight(date);
    }
    if let Ok(with_offset) = DateTime::parse_from_rfc3339(text) {
        return Some(with_offset.with_timezone(&Utc));
    }
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return jst()
                .from_local_datetime(&naive)
                .single()
                .map(|t| t.with_timezone(&Utc));
        }
    }
    None
}

/// 00:00 JST of `date`.
pub fn jst_midnight(date: NaiveDate) -> Option<Instant> {
    let naive = date.and_hms_opt(0, 0, 0)?;
    jst()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// The JST calendar date of an instant.
pub fn jst_date(at: Instant) -> NaiveDate {
    at.with_timezone(&jst()).date_naive()
}

/// An instant shown in JST, e.g. `2026-06-01T10:00:00+09:00`.
pub fn format_jst(at: Instant) -> String {
    at.with_timezone(&jst())
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_is_midnight_jst() {
        let t = parse_policy_time("2026-04-01").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-03-31T15:00:00+00:00");
        assert_eq!(format_jst(t), "2026-04-01T00:00:00+09:00");
    }

    #[test]
    fn a_timestamp_without_offset_is_jst() {
        let a = parse_policy_time("2026-06-01T10:00:00").unwrap();
        let b = parse_policy_time("2026-06-01T10:00:00+09:00").unwrap();
        let c = parse_policy_time("2026-06-01T01:00:00Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(b, c);
    }

    #[test]
    fn nonsense_is_rejected() {
        for bad in ["", "tomorrow", "2026-13-01", "2026-02-30", "20260401"] {
            assert!(parse_policy_time(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn jst_date_crosses_midnight_utc() {
        let t = parse_policy_time("2026-04-01T08:59:59+09:00").unwrap();
        assert_eq!(jst_date(t).to_string(), "2026-04-01");
    }
}
