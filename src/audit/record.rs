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

/// Writes canonical JSON object members in the order given (callers give keys in byte
/// order); strings are escaped exactly as serde_json escapes them.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, first: true }
    }
    fn key(&mut self, k: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        push_str(self.out, k);
        self.out.push(b':');
    }
    fn str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.key(k);
            push_str(self.out, v);
        }
    }
    fn raw(&mut self, k: &str, v: &str) {
        self.key(k);
        self.out.extend_from_slice(v.as_bytes());
    }
    fn close(self) {
        self.out.push(b'}');
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's string escaping: the canonical form.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// The canonical bytes of a record at sequence `seq`: keys in byte order at every level,
/// written directly (the test `direct_encoding_equals_the_value_tree` holds it to the
/// `serde_json::Value` form it was first defined by).
pub fn encode(seq: u64, r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let mut o = Obj::open(&mut out);
    o.str("action", r.action.as_deref());
    if let Some(a) = &r.asset {
        o.key("asset");
        let mut x = Obj::open(o.out);
        x.str("availability", a.availability.as_deref());
        x.str("confidentiality", a.confidentiality.as_deref());
        x.str("id", Some(&a.id));
        x.str("integrity", a.integrity.as_deref());
        if let Some(mn) = a.my_number {
            x.raw("my_number", if mn { "true" } else { "false" });
        }
        x.str("owner", a.owner.as_deref());
        x.str("tier", a.tier.as_deref());
        x.close();
    }
    o.str("decision", r.decision.as_deref());
    o.str("detail", r.detail.as_deref());
    if let Some(e) = &r.env {
        o.key("env");
        let mut x = Obj::open(o.out);
        x.str("break_glass_reason", e.break_glass_reason.as_deref());
        x.raw(
            "device_issued",
            if e.device_issued { "true" } else { "false" },
        );
        x.str("purpose", e.purpose.as_deref());
        x.close();
    }
    o.str("id", Some(&r.id));
    o.str("kind", Some(r.kind.as_str()));
    if !r.obligations.is_empty() {
        o.key("obligations");
        o.out.push(b'[');
        for (i, ob) in r.obligations.iter().enumerate() {
            if i > 0 {
                o.out.push(b',');
            }
            push_str(o.out, ob);
        }
        o.out.push(b']');
    }
    o.str("policy_version", r.policy_version.as_deref());
    o.str("reason", r.reason.as_deref());
    o.str("request_id", r.request_id.as_deref());
    o.str("rule", r.rule.as_deref());
    o.raw("seq", &seq.to_string());
    if let Some(s) = &r.subject {
        o.key("subject");
        let mut x = Obj::open(o.out);
        x.str("contract", s.contract.as_deref());
        x.str("kind", Some(&s.kind));
        x.str("section", s.section.as_deref());
        x.str("sub", Some(&s.sub));
        x.close();
    }
    o.str("system", r.system.as_deref());
    o.raw("time_us", &r.time_us.to_string());
    o.raw("v", &ENCODING_VERSION.to_string());
    o.close();
    out
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
    use serde_json::{Map, Value};
    use std::collections::BTreeMap;

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

    /// The definition the direct encoder is held to.
    fn encode_reference(seq: u64, r: &Record) -> Vec<u8> {
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

    /// Random records, strings with quotes, control characters, Japanese and emoji: the
    /// direct encoder writes exactly the bytes of the `serde_json::Value` definition.
    #[test]
    fn direct_encoding_equals_the_value_tree() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(7);
        let pieces = [
            "a",
            "\"",
            "\\",
            "\n",
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            "市民課",
            "😀",
            "</",
            "\u{2028}",
            " ",
            "=1+1",
        ];
        let text = |rng: &mut SmallRng| -> String {
            (0..rng.gen_range(0..6))
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect()
        };
        for _ in 0..2000 {
            let mut r = vector_record();
            let maybe =
                |rng: &mut SmallRng, v: String| if rng.gen_bool(0.5) { Some(v) } else { None };
            r.id = text(&mut rng);
            r.time_us = rng.r#gen::<i64>();
            r.system = {
                let t = text(&mut rng);
                maybe(&mut rng, t)
            };
            r.action = {
                let t = text(&mut rng);
                maybe(&mut rng, t)
            };
            r.detail = {
                let t = text(&mut rng);
                maybe(&mut rng, t)
            };
            r.request_id = {
                let t = text(&mut rng);
                maybe(&mut rng, t)
            };
            r.obligations = (0..rng.gen_range(0..3)).map(|_| text(&mut rng)).collect();
            if rng.gen_bool(0.3) {
                r.asset = None;
            } else if let Some(a) = r.asset.as_mut() {
                a.my_number = if rng.gen_bool(0.5) {
                    Some(rng.gen_bool(0.5))
                } else {
                    None
                };
                a.owner = {
                    let t = text(&mut rng);
                    maybe(&mut rng, t)
                };
            }
            if rng.gen_bool(0.3) {
                r.subject = None;
            } else if let Some(s) = r.subject.as_mut() {
                s.contract = {
                    let t = text(&mut rng);
                    maybe(&mut rng, t)
                };
                s.sub = text(&mut rng);
            }
            if rng.gen_bool(0.3) {
                r.env = None;
            } else if let Some(e) = r.env.as_mut() {
                e.break_glass_reason = {
                    let t = text(&mut rng);
                    maybe(&mut rng, t)
                };
                e.device_issued = rng.gen_bool(0.5);
            }
            let seq = rng.r#gen::<u64>();
            assert_eq!(
                String::from_utf8(encode(seq, &r)).unwrap(),
                String::from_utf8(encode_reference(seq, &r)).unwrap()
            );
        }
    }

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
