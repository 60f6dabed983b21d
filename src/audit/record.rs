//! Decision-log records and their canonical byte encoding.
//!
//! The encoding (documented with test vectors in `docs/decision-log.md`) is canonical
//! JSON: UTF-8; object keys in byte order; no insignificant white space; absent optional
//! fields omitted; integers in decimal; strings escaped as JSON requires (`"`, `\`,
//! control characters as `\uXXXX` or the short escapes), nothing else escaped. The
//! stored bytes are what is hashed: verification re-hashes stored bytes and never
//! re-serializes, so a change of this code can never change an old record's hash.
//!
//! This module knows nothing of the engine or of gRPC types.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Version of the encoding, written in every record as `"v"`.
pub const ENCODING_VERSION: u64 = 1;

/// What a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A decision given to a business system.
    Decision,
    /// A request refused before any decision (unregistered certificate, bad token).
    Rejected,
    /// An admin action (emergency, lockdown, reload request).
    Admin,
    /// An auditor's query of the log.
    Audit,
    /// A policy reload and its outcome.
    Reload,
    Start,
    Stop,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Decision => "decision",
            RecordKind::Rejected => "rejected",
            RecordKind::Admin => "admin",
            RecordKind::Audit => "audit",
            RecordKind::Reload => "reload",
            RecordKind::Start => "start",
            RecordKind::Stop => "stop",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RecordKind::Decision,
            RecordKind::Rejected,
            RecordKind::Admin,
            RecordKind::Audit,
            RecordKind::Reload,
            RecordKind::Start,
            RecordKind::Stop,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// The subject as recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectRef {
    pub sub: String,
    pub section: Option<String>,
    pub kind: String,
    pub contract: Option<String>,
}

/// The asset and its levels at decision time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AssetRef {
    pub id: String,
    pub owner: Option<String>,
    pub confidentiality: Option<String>,
    pub integrity: Option<String>,
    pub availability: Option<String>,
    pub tier: Option<String>,
    pub my_number: Option<bool>,
}

/// The environment of a request as recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvRef {
    pub device_issued: bool,
    pub purpose: Option<String>,
    pub break_glass_reason: Option<String>,
}

/// One record before it is sequenced and chained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Unique, sortable id (UUIDv7); for decisions, the id the caller received.
    pub id: String,
    /// Microseconds since the Unix epoch, UTC.
    pub time_us: i64,
    pub kind: RecordKind,
    pub system: Option<String>,
    pub subject: Option<SubjectRef>,
    pub asset: Option<AssetRef>,
    pub action: Option<String>,
    pub env: Option<EnvRef>,
    /// `allow` or `deny` for decisions.
    pub decision: Option<String>,
    pub reason: Option<String>,
    pub rule: Option<String>,
    pub obligations: Vec<String>,
    pub policy_version: Option<String>,
    pub request_id: Option<String>,
    /// Free text for non-decision records (what was done, the outcome, the filter).
    pub detail: Option<String>,
}

impl Record {
    /// A record of `kind` now, with a fresh id and nothing else.
    pub fn new(kind: RecordKind) -> Self {
        Record {
            id: uuid::Uuid::now_v7().to_string(),
            time_us: chrono::Utc::now().timestamp_micros(),
            kind,
            system: None,
            subject: None,
            asset: None,
            action: None,
            env: None,
            decision: None,
            reason: None,
            rule: None,
            obligations: Vec::new(),
            policy_version: None,
            request_id: None,
            detail: None,
        }
    }
}

fn put(map: &mut BTreeMap<&'static str, Value>, key: &'static str, v: Option<&str>) {
    if let Some(v) = v {
        map.insert(key, Value::String(v.to_string()));
    }
}

fn object(map: BTreeMap<&'static str, Value>) -> Value {
    // serde_json's Map keeps keys sorted (no `preserve_order`); building from a BTreeMap
    // makes the order explicit either way.
    let mut m = Map::new();
    for (k, v) in map {
        m.insert(k.to_string(), v);
    }
    Value::Object(m)
}

/// The canonical bytes of a record at sequence `seq`.
pub fn encode(seq: u64, r: &Record) -> Vec<u8> {
    let mut m: BTreeMap<&'static str, Value> = BTreeMap::new();
    m.insert("v", Value::from(ENCODING_VERSION));
    m.insert("seq", Value::from(seq));
    m.insert("id", Value::String(r.id.clone()));
    m.insert("time_us", Value::from(r.time_us));
    m.insert("kind", Value::String(r.kind.as_str().to_string()));
    put(&mut m, "system", r.system.as_deref());
    if let Some(s) = &r.subject {
        let mut o = BTreeMap::new();
        put(&mut o, "sub", Some(&s.sub));
        put(&mut o, "section", s.section.as_deref());
        put(&mut o, "kind", Some(&s.kind));
        put(&mut o, "contract", s.contract.as_deref());
        m.insert("subject", object(o));
    }
    if let Some(a) = &r.asset {
        let mut o = BTreeMap::new();
        put(&mut o, "id", Some(&a.id));
        put(&mut o, "owner", a.owner.as_deref());
        put(&mut o, "confidentiality", a.confidentiality.as_deref());
        put(&mut o, "integrity", a.integrity.as_deref());
        put(&mut o, "availability", a.availability.as_deref());
        put(&mut o, "tier", a.tier.as_deref());
        if let Some(mn) = a.my_number {
            o.insert("my_number", Value::Bool(mn));
        }
        m.insert("asset", object(o));
    }
    put(&mut m, "action", r.action.as_deref());
    if let Some(e) = &r.env {
        let mut o = BTreeMap::new();
        o.insert("device_issued", Value::Bool(e.device_issued));
        put(&mut o, "purpose", e.purpose.as_deref());
        put(
            &mut o,
            "break_glass_reason",
            e.break_glass_reason.as_deref(),
        );
        m.insert("env", object(o));
    }
    put(&mut m, "decision", r.decision.as_deref());
    put(&mut m, "reason", r.reason.as_deref());
    put(&mut m, "rule", r.rule.as_deref());
    if !r.obligations.is_empty() {
        m.insert(
            "obligations",
            Value::Array(r.obligations.iter().cloned().map(Value::String).collect()),
        );
    }
    put(&mut m, "policy_version", r.policy_version.as_deref());
    put(&mut m, "request_id", r.request_id.as_deref());
    put(&mut m, "detail", r.detail.as_deref());
    serde_json::to_vec(&object(m)).unwrap_or_default()
}

/// Hash of a record: SHA-256 of the previous record's hash (32 bytes; zeros before the
/// first record) followed by the record's stored bytes.
pub fn chain_hash(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// The hash before the first record.
pub const GENESIS: [u8; 32] = [0u8; 32];

#[cfg(test)]
mod tests {
    use super::*;

    /// The known-answer vector of `docs/decision-log.md`.
    pub fn vector_record() -> Record {
        Record {
            id: "019a0000-0000-7000-8000-000000000001".into(),
            time_us: 1_780_275_600_000_000,
            kind: RecordKind::Decision,
            system: Some("juki".into()),
            subject: Some(SubjectRef {
                sub: "e1010".into(),
                section: Some("shimin".into()),
                kind: "staff".into(),
                contract: None,
            }),
            asset: Some(AssetRef {
                id: "juki-main".into(),
                owner: Some("shimin".into()),
                confidentiality: Some("3".into()),
                integrity: Some("2".into()),
                availability: Some("2".into()),
                tier: Some("secret".into()),
                my_number: Some(true),
            }),
            action: Some("read".into()),
            env: Some(EnvRef {
                device_issued: true,
                purpose: Some("jumin-kiroku".into()),
                break_glass_reason: None,
            }),
            decision: Some("allow".into()),
            reason: Some("grant".into()),
            rule: Some("juki-handlers-2026".into()),
            obligations: vec![],
            policy_version: Some("sha256:b2fb4882d6755eb3".into()),
            request_id: Some("madoguchi-0001".into()),
            detail: None,
        }
    }

    pub const VECTOR_BYTES: &str = r#"{"action":"read","asset":{"availability":"2","confidentiality":"3","id":"juki-main","integrity":"2","my_number":true,"owner":"shimin","tier":"secret"},"decision":"allow","env":{"device_issued":true,"purpose":"jumin-kiroku"},"id":"019a0000-0000-7000-8000-000000000001","kind":"decision","policy_version":"sha256:b2fb4882d6755eb3","reason":"grant","request_id":"madoguchi-0001","rule":"juki-handlers-2026","seq":1,"subject":{"kind":"staff","section":"shimin","sub":"e1010"},"system":"juki","time_us":1780275600000000,"v":1}"#;

    #[test]
    fn known_answer_bytes() {
        assert_eq!(
            String::from_utf8(encode(1, &vector_record())).unwrap(),
            VECTOR_BYTES
        );
    }

    #[test]
    fn known_answer_hash() {
        let h = chain_hash(&GENESIS, VECTOR_BYTES.as_bytes());
        assert_eq!(
            hex::encode(h),
            include_str!("../../docs/decision-log-vector.sha256").trim()
        );
    }

    #[test]
    fn japanese_stays_utf8_and_control_characters_are_escaped() {
        let mut r = vector_record();
        r.detail = Some("理由\n\u{1b}[31m".into());
        let text = String::from_utf8(encode(2, &r)).unwrap();
        assert!(text.contains(r#""detail":"理由\n\u001b[31m""#), "{text}");
    }
}
