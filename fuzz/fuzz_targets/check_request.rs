//! A check as it arrives on the wire: arbitrary bytes decoded as `CheckRequest` (and as
//! `BatchCheckRequest`), converted by the service's one conversion (`question_of`), then
//! decided against the sample city. Never a panic; an allow only for an asset of the
//! register held by the asking system, with Casbin and the explainer agreeing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sekimori::engine::{Request, Snapshot, Subject, SubjectKind};
use sekimori::policy::model::RuntimeState;
use sekimori::server::proto::{BatchCheckRequest, CheckRequest};
use std::sync::OnceLock;

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let at = sekimori::time::parse_policy_time("2026-06-01T12:00:00+09:00").unwrap();
        let loaded = sekimori::policy::load(&dir, at);
        assert!(loaded.is_valid());
        Snapshot::compile(&loaded, at, &RuntimeState::default()).unwrap()
    })
}

fn decide(
    asset: &str,
    action: &str,
    env: Option<sekimori::server::proto::Environment>,
    id: String,
) {
    let Ok(q) = sekimori::server::question_of(asset, action, env, id) else {
        return;
    };
    let snap = snapshot();
    for (system, subject) in [
        (
            "juki",
            Subject::new(
                "e1010",
                Some("shimin"),
                SubjectKind::Staff,
                None,
                &["pwd".into(), "fpt".into()],
            ),
        ),
        (
            "juki",
            Subject::new(
                "x-014",
                None,
                SubjectKind::Contractor,
                Some("k-2026-014"),
                &["pwd".into()],
            ),
        ),
        (
            "zeimu",
            Subject::new(
                "e2010",
                Some("shiminzei"),
                SubjectKind::Staff,
                None,
                &["pwd".into()],
            ),
        ),
    ] {
        let req = Request {
            system: system.into(),
            subject,
            asset: q.asset.clone(),
            action: q.action,
            env: q.env.clone(),
        };
        let d = snap.decide(&req);
        if d.allow {
            let held = snap
                .facts()
                .asset_index
                .get(q.asset.as_str())
                .and_then(|&i| snap.facts().assets.get(i as usize))
                .is_some_and(|a| a.holders.iter().any(|h| h == system));
            assert!(held, "allowed an asset {system} does not hold: {}", q.asset);
        }
    }
    assert_eq!(snap.disagreements(), 0);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = CheckRequest::decode(data) {
        decide(&r.asset, &r.action, r.env, r.request_id);
    }
    if let Ok(b) = BatchCheckRequest::decode(data) {
        for c in b.checks.into_iter().take(50) {
            decide(&c.asset, &c.action, c.env, c.request_id);
        }
    }
});
