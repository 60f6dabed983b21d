//! `sekimori policy diff OLD NEW`: what a change does before it goes live — grants and
//! assets added, removed or changed (with the fields), and the decisions that flip.

use crate::engine::{Env, Request, Snapshot, Subject, SubjectKind};
use crate::policy::Loaded;
use crate::policy::diag::escape;
use crate::policy::model::{Action, Asset, AssetSelection, Grant, RuntimeState};
use crate::time::Instant;
use std::collections::{BTreeMap, BTreeSet};

/// Field name → value as text, for comparing entries of two bundles.
fn grant_fields(g: &Grant) -> BTreeMap<&'static str, String> {
    let list = |v: &[crate::policy::model::Spanned<String>]| {
        v.iter()
            .map(|x| x.value.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut m = BTreeMap::new();
    m.insert("users", list(&g.subjects.users));
    m.insert("sections", list(&g.subjects.sections));
    m.insert("contracts", list(&g.subjects.contracts));
    m.insert(
        "assets",
        match &g.assets {
            AssetSelection::List(ids) => list(ids),
            AssetSelection::Select {
                owner,
                max_confidentiality,
                ..
            } => format!(
                "select owner={} max_confidentiality={}",
                owner.as_ref().map_or("*", |o| o.value.as_str()),
                max_confidentiality
                    .as_ref()
                    .map_or("*", |o| o.value.as_str())
            ),
        },
    );
    m.insert(
        "actions",
        g.actions
            .iter()
            .map(|a| a.value.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    );
    m.insert("purposes", list(&g.purposes));
    m.insert("valid_from", g.valid_from.value.to_rfc3339());
    m.insert("valid_until", g.valid_until.value.to_rfc3339());
    m.insert("approved_by", g.approved_by.value.clone());
    m
}

fn asset_fields(a: &Asset) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    m.insert("owner", a.owner.value.clone());
    m.insert(
        "systems",
        a.systems
            .iter()
            .map(|s| s.value.clone())
            .collect::<Vec<_>>()
            .join(", "),
    );
    m.insert("confidentiality", a.confidentiality.value.clone());
    m.insert("integrity", a.integrity.value.clone());
    m.insert("availability", a.availability.value.clone());
    m.insert("my_number", a.my_number.value.to_string());
    m
}

fn compare<'a, T>(
    kind: &str,
    old: &'a [T],
    new: &'a [T],
    id: impl Fn(&T) -> &str,
    fields: impl Fn(&T) -> BTreeMap<&'static str, String>,
    out: &mut String,
) -> usize {
    let o: BTreeMap<&str, &T> = old.iter().map(|x| (id(x), x)).collect();
    let n: BTreeMap<&str, &T> = new.iter().map(|x| (id(x), x)).collect();
    let mut changes = 0;
    for (k, x) in &n {
        match o.get(k) {
            None => {
                out.push_str(&format!("  + {kind} {k}\n"));
                changes += 1;
            }
            Some(y) => {
                let (fx, fy) = (fields(x), fields(y));
                let diffs: Vec<String> = fx
                    .iter()
                    .filter(|(f, v)| fy.get(*f) != Some(v))
                    .map(|(f, v)| format!("{f}: {} → {}", fy.get(f).map_or("", String::as_str), v))
                    .collect();
                if !diffs.is_empty() {
                    out.push_str(&format!("  ~ {kind} {k}: {}\n", diffs.join("; ")));
                    changes += 1;
                }
            }
        }
    }
    for k in o.keys().filter(|k| !n.contains_key(*k)) {
        out.push_str(&format!("  - {kind} {k}\n"));
        changes += 1;
    }
    changes
}

/// Most (subject, asset, action) combinations evaluated; beyond it only assets touched by
/// the change are considered.
const MAX_EVALUATIONS: usize = 2_000_000;

pub fn diff(
    old: &Loaded,
    new: &Loaded,
    at: Instant,
) -> Result<(String, usize), crate::engine::CompileError> {
    let mut out = String::new();
    out.push_str("grants:\n");
    let mut changes = compare(
        "grant",
        &old.bundle.grants,
        &new.bundle.grants,
        |g| g.id.value.as_str(),
        grant_fields,
        &mut out,
    );
    out.push_str("assets (classification):\n");
    changes += compare(
        "asset",
        &old.bundle.assets,
        &new.bundle.assets,
        |a| a.id.value.as_str(),
        asset_fields,
        &mut out,
    );
    let state = RuntimeState::default();
    let (so, sn) = (
        Snapshot::compile(old, at, &state)?,
        Snapshot::compile(new, at, &state)?,
    );

    // Subjects named in either bundle: grant users, one staff member per section, one
    // contractor per contract.
    let mut subjects: Vec<(String, Subject)> = Vec::new();
    let mut users = BTreeSet::new();
    for b in [&old.bundle, &new.bundle] {
        for g in &b.grants {
            users.extend(g.subjects.users.iter().map(|u| u.value.clone()));
        }
    }
    let mfa = [String::from("pwd"), String::from("otp")];
    for u in users {
        subjects.push((
            u.clone(),
            Subject::new(&u, None, SubjectKind::Staff, None, &mfa),
        ));
    }
    let sections: BTreeSet<String> = [&old.bundle, &new.bundle]
        .iter()
        .flat_map(|b| b.sections().map(|s| s.id.value.clone()))
        .collect();
    for s in sections {
        subjects.push((
            format!("(staff of {s})"),
            Subject::new("(staff)", Some(&s), SubjectKind::Staff, None, &mfa),
        ));
    }
    let contracts: BTreeSet<String> = [&old.bundle, &new.bundle]
        .iter()
        .flat_map(|b| b.contracts.iter().map(|c| c.id.value.clone()))
        .collect();
    for c in contracts {
        subjects.push((
            format!("(contractor of {c})"),
            Subject::new(
                "(contractor)",
                None,
                SubjectKind::Contractor,
                Some(&c),
                &mfa,
            ),
        ));
    }
    let purposes: BTreeSet<String> = [&old.bundle, &new.bundle]
        .iter()
        .flat_map(|b| {
            b.grants
                .iter()
                .flat_map(|g| g.purposes.iter().map(|p| p.value.clone()))
        })
        .collect();
    // Asset → (a holding system, whether either bundle marks it my_number).
    let mut assets: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for b in [&old.bundle, &new.bundle] {
        for a in &b.assets {
            if let Some(sys) = a.systems.first() {
                let e = assets
                    .entry(a.id.value.clone())
                    .or_insert_with(|| (sys.value.clone(), false));
                e.1 |= a.my_number.value;
            }
        }
    }
    if subjects.len() * assets.len() * Action::ALL.len() > MAX_EVALUATIONS {
        let touched: BTreeSet<String> = out
            .lines()
            .filter_map(|l| l.split_whitespace().nth(2))
            .map(|s| s.trim_end_matches(':').to_string())
            .collect();
        assets.retain(|a, _| touched.contains(a));
    }
    let mut flips: Vec<String> = Vec::new();
    for (label, subject) in &subjects {
        for (asset, (system, my_number)) in &assets {
            for action in Action::ALL {
                let mut ps: Vec<Option<String>> = vec![None];
                // Purposes matter only for my_number assets.
                if *my_number {
                    ps.extend(purposes.iter().cloned().map(Some));
                }
                for purpose in ps {
                    let req = Request {
                        system: system.clone(),
                        subject: subject.clone(),
                        asset: asset.clone(),
                        action,
                        env: Env {
                            device_issued: true,
                            purpose: purpose.clone(),
                            break_glass_reason: None,
                        },
                    };
                    // Each request once per side: nothing to remember.
                    let (a, b) = (so.decide_uncached(&req), sn.decide_uncached(&req));
                    if a.allow != b.allow {
                        flips.push(format!(
                            "  {} {label} {action} {asset}{}: {} → {}",
                            if b.allow {
                                "deny→ALLOW"
                            } else {
                                "allow→DENY"
                            },
                            purpose
                                .map(|p| format!(" (purpose {p})"))
                                .unwrap_or_default(),
                            a.reason.as_str(),
                            b.reason.as_str()
                        ));
                        break;
                    }
                }
            }
        }
    }
    out.push_str(&format!(
        "decisions that change ({}), for the subjects and assets named in the bundles:\n",
        flips.len()
    ));
    for f in &flips {
        out.push_str(&escape(f));
        out.push('\n');
    }
    Ok((out, changes + flips.len()))
}
