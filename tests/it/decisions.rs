//! The decision tables: the sample city's tests run through the library (the same cases
//! `sekimori policy test` runs), and the agreement of Casbin and the explainer on a
//! generated city.

use crate::support::{at, repo};
use sekimori::engine::{Env, Reason, Request, Snapshot, Subject, SubjectKind};
use sekimori::policy::model::{Action, RuntimeState};

#[test]
fn the_sample_city_is_valid_and_its_tests_cover_every_reason() {
    let loaded = sekimori::policy::load(&repo().join("policies"), at("2026-06-01"));
    let errors: Vec<_> = loaded.diagnostics.errors().collect();
    assert!(errors.is_empty(), "{errors:?}");
    let tests = &loaded.bundle.tests;
    assert!(tests.len() >= 40);
    let mut seen_reasons = std::collections::BTreeSet::new();
    let mut seen_obligations = std::collections::BTreeSet::new();
    for t in tests {
        let snap = Snapshot::compile(&loaded, t.at.unwrap(), &t.state).unwrap();
        let req = Request::from_test_case(t).unwrap();
        let d = snap.decide(&req);
        assert_eq!(d.allow, t.expect_allow.value, "{}: {:?}", t.name, d.reason);
        if let Some(r) = &t.reason {
            assert_eq!(d.reason.as_str(), r.value, "{}", t.name);
        }
        seen_reasons.insert(d.reason);
        seen_obligations.extend(d.obligations.iter().map(|o| o.name()));
    }
    for r in Reason::DENY_RULES
        .iter()
        .chain(Reason::ALLOW_RULES.iter())
        .chain([Reason::NoPermission].iter())
    {
        assert!(seen_reasons.contains(r), "no sample test decides {r:?}");
    }
    for o in ["encrypt", "label", "watermark", "backup", "post_review"] {
        assert!(seen_obligations.contains(o), "no sample test carries {o}");
    }
}

/// A small generated city compiled at noon, and requests over every grant: each action,
/// from an issued device with MFA and a purpose, from an unmanaged device without, and
/// with another purpose.
fn generated_city() -> (Snapshot, Vec<Request>) {
    let dir = tempfile::tempdir().unwrap();
    sekimori::generate::small(dir.path(), 7).unwrap();
    let loaded = sekimori::policy::load(dir.path(), at("2026-06-01"));
    assert!(
        loaded.is_valid(),
        "{}",
        loaded.diagnostics.render(
            &loaded.bundle.sources,
            sekimori::policy::diag::Format::Plain,
            false
        )
    );
    let snap = Snapshot::compile(
        &loaded,
        at("2026-06-01T12:00:00+09:00"),
        &RuntimeState::default(),
    )
    .unwrap();
    let bundle = &loaded.bundle;
    let mut requests = Vec::new();
    for (gi, g) in bundle.grants.iter().enumerate() {
        let asset_id = match &g.assets {
            sekimori::policy::model::AssetSelection::List(ids) => ids[0].value.clone(),
            _ => bundle.assets[gi % bundle.assets.len()].id.value.clone(),
        };
        let asset = bundle
            .assets
            .iter()
            .find(|a| a.id.value == asset_id)
            .unwrap();
        let (sub, section, kind, contract) = match (
            g.subjects.users.first(),
            g.subjects.sections.first(),
            g.subjects.contracts.first(),
        ) {
            (Some(u), _, _) => (
                u.value.clone(),
                Some("s001".to_string()),
                SubjectKind::Staff,
                None,
            ),
            (_, Some(s), _) => (
                format!("e-{gi}"),
                Some(s.value.clone()),
                SubjectKind::Staff,
                None,
            ),
            (_, _, Some(c)) => (
                format!("x-{gi}"),
                None,
                SubjectKind::Contractor,
                Some(c.value.clone()),
            ),
            _ => continue,
        };
        for action in Action::ALL {
            for (device, amr, purpose) in [
                (
                    true,
                    vec!["pwd".to_string(), "otp".to_string()],
                    Some("jimu-a"),
                ),
                (false, vec![], None),
                (true, vec!["pwd".to_string()], Some("other")),
            ] {
                requests.push(Request {
                    system: asset.systems[0].value.clone(),
                    subject: Subject::new(
                        &sub,
                        section.as_deref(),
                        kind,
                        contract.as_deref(),
                        &amr,
                    ),
                    asset: asset_id.clone(),
                    action,
                    env: Env {
                        device_issued: device,
                        purpose: purpose.map(str::to_string),
                        break_glass_reason: None,
                    },
                });
            }
        }
    }
    (snap, requests)
}

/// Casbin and the explainer are two evaluations of SPEC §6; on every request of a
/// generated city they must agree (a disagreement would surface as `internal_error`).
#[test]
fn casbin_and_the_explainer_agree_on_a_generated_city() {
    let (snap, requests) = generated_city();
    let mut allows = 0;
    let n = requests.len();
    for req in &requests {
        let d = snap.decide_uncached(req);
        assert_ne!(d.reason, Reason::InternalError, "disagreement on {req:?}");
        allows += usize::from(d.allow);
    }
    assert_eq!(snap.disagreements(), 0);
    assert!(
        allows > n / 20,
        "the mix should hold allows: {allows} of {n}"
    );
    assert!(allows < n, "and denies");
}

/// The service decides through the snapshot's remembered Casbin verdicts: the first time a
/// request is seen and every time after, its decision is the one Casbin evaluating afresh
/// gives, and a snapshot holds a verdict for each distinct Casbin request it decided.
#[test]
fn remembered_verdicts_decide_as_casbin_evaluating_afresh() {
    let (snap, requests) = generated_city();
    let fields = |d: &sekimori::engine::Decision| {
        (
            d.allow,
            d.reason,
            d.rule.clone(),
            d.obligations.clone(),
            d.policy_version.clone(),
        )
    };
    for req in &requests {
        let fresh = fields(&snap.decide_uncached(req));
        assert_eq!(fields(&snap.decide(req)), fresh, "first sight of {req:?}");
        assert_eq!(fields(&snap.decide(req)), fresh, "remembered for {req:?}");
    }
    assert_eq!(snap.disagreements(), 0);
    let distinct: std::collections::HashSet<_> = requests
        .iter()
        .map(|r| format!("{:?}", snap.casbin_request(r).values()))
        .collect();
    assert_eq!(snap.remembered_verdicts(), distinct.len());
}

/// The sample city with one grant narrowed: `koseki-inkan-handlers` (e1010, e1012) no
/// longer covers `juki-inkan`.
fn sample_without_the_inkan_grant() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    crate::support::overlay(&repo().join("policies"), tmp.path());
    let grants = tmp.path().join("grants/shimin.yaml");
    let text = std::fs::read_to_string(&grants).unwrap().replace(
        "assets: [juki-koseki-fuhyo, juki-inkan]",
        "assets: [juki-koseki-fuhyo]",
    );
    std::fs::write(&grants, text).unwrap();
    tmp
}

/// Verdicts belong to the snapshot that decided them: after a reload that takes a grant
/// away, the new snapshot denies a request the old one had allowed (and remembered), and
/// the old one, still serving requests in flight, keeps its own policy's answer.
#[test]
fn a_new_snapshot_remembers_nothing_of_the_old_one() {
    let at_noon = at("2026-06-01T12:00:00+09:00");
    let old = Snapshot::compile(
        &sekimori::policy::load(&repo().join("policies"), at_noon),
        at_noon,
        &RuntimeState::default(),
    )
    .unwrap();
    let tmp = sample_without_the_inkan_grant();
    let new = Snapshot::compile(
        &sekimori::policy::load(tmp.path(), at_noon),
        at_noon,
        &RuntimeState::default(),
    )
    .unwrap();
    let req = Request {
        system: "juki".into(),
        subject: Subject::new(
            "e1010",
            Some("shimin"),
            SubjectKind::Staff,
            None,
            &["pwd".into(), "fpt".into()],
        ),
        asset: "juki-inkan".into(),
        action: Action::Read,
        env: Env {
            device_issued: true,
            purpose: None,
            break_glass_reason: None,
        },
    };
    for _ in 0..2 {
        let d = old.decide(&req);
        assert!(d.allow, "{:?}", d.reason);
        assert_eq!(d.reason, Reason::Grant);
    }
    assert_eq!(old.remembered_verdicts(), 1);
    assert_eq!(new.remembered_verdicts(), 0);
    let d = new.decide(&req);
    assert!(!d.allow);
    assert_eq!(d.reason, Reason::NoPermission);
    assert!(
        old.decide(&req).allow,
        "the old snapshot keeps its own answer"
    );
}

#[test]
fn an_unknown_kind_of_subject_is_not_a_subject() {
    assert_eq!(SubjectKind::parse(Some("admin")), None);
}

#[test]
fn policy_diff_lists_changes_and_flipped_decisions() {
    let tmp = sample_without_the_inkan_grant();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sekimori"))
        .args(["policy", "diff", "--at", "2026-06-01"])
        .arg(repo().join("policies"))
        .arg(tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("~ grant koseki-inkan-handlers: assets: juki-koseki-fuhyo, juki-inkan → juki-koseki-fuhyo"), "{stdout}");
    assert!(
        stdout.contains("allow→DENY e1010 read juki-inkan: grant → no_permission"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("juki-koseki-fuhyo: grant → no_permission"),
        "unchanged decisions are not listed: {stdout}"
    );
}
