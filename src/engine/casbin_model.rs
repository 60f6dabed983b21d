//! The Casbin model, the policy rows generated from [`Facts`], and the request tuple.
//!
//! Design (see `docs/policy-format.md`, "How decisions are compiled"): the rules of SPEC §6
//! are one policy row whose matcher is "no deny rule applies, and an allow rule does", so
//! every request is one evaluation of the matcher whatever the size of the city. The
//! register, the owner sections' rights, grants, contracts, lockdowns and emergencies
//! become role links `g(name, fact, asset)` in the asset's own domain: a lookup among that
//! asset's few links, never a scan of the city.
//!
//! The asset's levels travel in the request (`r.public`, `r.secret`, `r.mn`, as attributes
//! of the object in Casbin's ABAC style) together with its class (`r.cls`, e.g.
//! `class:internal+my_number`), and one link proves both that the system holds the asset
//! and that the asset is of that class: `g(y:<system>, <class>, <asset>)`. A request whose
//! levels are not the register's finds no link and is denied. The owner section's rights
//! are links like a section's grants (`s:<owner>, <action>, <asset>`), so one lookup answers
//! both. This keeps most decisions at two or three `g()` calls (casbin-rs evaluates the
//! matcher with an interpreter; see BENCHMARKS.md for what each call costs), and the
//! fields most read sit last in `r` (the interpreter looks variables up from the end).
//!
//! Node names are typed by prefix so that no value from a request can collide with a fact:
//! `@` is the asset itself, `y:` a system, `s:` a section, `c:` a contract, `u:` a user.
//! Casbin's `has_link(a, a)` is true for any `a`, so a name and a fact must never be
//! spellable alike; facts never start with those prefixes. Free text (user ids, purposes)
//! is percent-encoded ([`encode`]) so that a comma or a quote cannot break a CSV row.

use super::facts::{AssetFacts, Facts};
use crate::policy::model::{Action, Tier};
use std::borrow::Cow;

/// The Casbin model (`model.conf`). The request tuple `r` is what `policy explain` prints;
/// `mfa`, `device`, `glass`, `mn` and `i2` are booleans, the rest strings.
pub const MODEL_CONF: &str = r##"# sekimori decision model (generated; see docs/policy-format.md)
[request_definition]
r = contract, actp, mfa, secret, glass, device, public, sys, cls, sub, section, mn, contractor, act, obj

[policy_definition]
p = eft

[role_definition]
g = _, _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
# No deny rule applies (SPEC §6, in order: holder and class — an asset not in the register
# has neither —, lockdown, contract, device, My Number, contractor output), and an allow
# rule does (public; the owner section's rights and grants by section, person or contract,
# with purpose for My Number assets; emergency responders).
m = (g(r.sys, r.cls, r.obj) || g(r.sys, "locked", r.obj) && g("@", r.cls, r.obj) && g(r.sub, "exempt:" + r.sys, r.obj)) && !(r.contractor && (!g(r.contract, "contract", r.obj) || r.secret && (r.act == "print" || r.act == "copy" || r.act == "export" || r.act == "transmit"))) && (r.device || r.public) && !(r.mn && (!r.mfa || r.actp == "" || r.act == "copy" || r.act == "export" || r.act == "transmit")) && (r.public && (r.act == "read" || r.act == "print" || r.act == "copy" || r.act == "export" || r.act == "transmit") || !r.contractor && (!r.mn && (g(r.section, r.act, r.obj) || g(r.sub, r.act, r.obj)) || r.mn && (g(r.section, r.actp, r.obj) || g(r.sub, r.actp, r.obj)) || r.glass && r.act == "read" && (g(r.sub, "responder", r.obj) || g(r.section, "responder", r.obj))) || r.contractor && (!r.mn && (g(r.contract, r.act, r.obj) || g(r.sub, r.act, r.obj)) || r.mn && (g(r.contract, r.actp, r.obj) || g(r.sub, r.actp, r.obj))))
"##;

/// The request fields, in `r` order (for `policy explain`).
pub const REQUEST_FIELDS: [&str; 15] = [
    "contract",
    "actp",
    "mfa",
    "secret",
    "glass",
    "device",
    "public",
    "sys",
    "cls",
    "sub",
    "section",
    "mn",
    "contractor",
    "act",
    "obj",
];

/// The one `p` row.
pub const P_ROWS: [[&str; 1]; 1] = [["allow"]];

/// The class fact of an asset: its tier, and whether it holds My Number data and has
/// integrity level 2 — everything the matcher reads about the asset.
pub fn class(a: &AssetFacts) -> &'static str {
    class_of(a.tier, a.my_number, a.integrity_2)
}

/// The position of an asset's class in [`all_classes`].
pub fn class_position(a: &AssetFacts) -> usize {
    a.tier as usize * 4 + usize::from(a.my_number) * 2 + usize::from(a.integrity_2)
}

fn class_of(tier: Tier, my_number: bool, integrity_2: bool) -> &'static str {
    match (tier, my_number, integrity_2) {
        (Tier::Public, false, false) => "class:public",
        (Tier::Public, false, true) => "class:public+integrity2",
        (Tier::Public, true, false) => "class:public+my_number",
        (Tier::Public, true, true) => "class:public+my_number+integrity2",
        (Tier::Internal, false, false) => "class:internal",
        (Tier::Internal, false, true) => "class:internal+integrity2",
        (Tier::Internal, true, false) => "class:internal+my_number",
        (Tier::Internal, true, true) => "class:internal+my_number+integrity2",
        (Tier::Secret, false, false) => "class:secret",
        (Tier::Secret, false, true) => "class:secret+integrity2",
        (Tier::Secret, true, false) => "class:secret+my_number",
        (Tier::Secret, true, true) => "class:secret+my_number+integrity2",
    }
}

/// Every class fact.
pub fn all_classes() -> impl Iterator<Item = &'static str> {
    [Tier::Public, Tier::Internal, Tier::Secret]
        .into_iter()
        .flat_map(|tier| {
            [(false, false), (false, true), (true, false), (true, true)]
                .map(|(my_number, i2)| class_of(tier, my_number, i2))
        })
}

/// Percent-encodes ASCII characters outside `[A-Za-z0-9._~@:/-]` (and `%`). Non-ASCII
/// text (Japanese names, purposes) passes unchanged.
pub fn encode(text: &str) -> Cow<'_, str> {
    let safe = |c: char| {
        !c.is_ascii()
            || c.is_ascii_alphanumeric()
            || matches!(c, '.' | '_' | '~' | '@' | ':' | '/' | '-')
    };
    if text.chars().all(safe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if safe(c) {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    Cow::Owned(out)
}

/// Where a row came from: the provenance written beside it in `policy.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The decision rules themselves (`p` rows).
    Model,
    /// An asset of the register (index into `Facts::assets`).
    Asset(u32),
    /// A grant (index into `Facts::grant_sources`).
    Grant(u32),
    /// A contract in force.
    Contract,
    /// A lockdown (index into `Facts::lockdowns`).
    Lockdown(u32),
    /// An emergency (index into `Facts::emergencies`).
    Emergency(u32),
}

/// Calls `emit(ptype, values, origin)` for every policy row, in a stable order: `p` rows,
/// then per asset (register order) its facts, grants, contracts, lockdowns, emergencies.
/// Rows are unique by construction.
pub fn for_each_row(facts: &Facts, emit: &mut dyn FnMut(&str, &[&str], Origin)) {
    for row in P_ROWS {
        emit("p", &row, Origin::Model);
    }
    // Contracts in force, by section, to expand per asset below.
    let mut contracts_by_section: std::collections::HashMap<&str, Vec<&str>> =
        std::collections::HashMap::new();
    let mut contract_ids: Vec<&String> = facts.contracts.keys().collect();
    contract_ids.sort();
    for c in contract_ids {
        if let Some(sections) = facts.contracts.get(c) {
            let mut s: Vec<&String> = sections.iter().collect();
            s.sort();
            for sec in s {
                contracts_by_section
                    .entry(sec.as_str())
                    .or_default()
                    .push(c.as_str());
            }
        }
    }
    for (ai, a) in facts.assets.iter().enumerate() {
        let ai32 = u32::try_from(ai).unwrap_or(u32::MAX);
        let dom = a.id.as_str();
        let here = Origin::Asset(ai32);
        let class = class(a);
        emit("g", &["@", class, dom], here);
        let owner = format!("s:{}", a.owner);
        for action in Action::ALL.into_iter().filter(|x| owner_may(a, *x)) {
            emit("g", &[&owner, action.as_str(), dom], here);
        }
        // A holder under lockdown gets a `locked` link instead (see `lockdown_rows`).
        for h in a.holders.iter().filter(|h| !locked(facts, ai32, h)) {
            emit("g", &[&format!("y:{h}"), class, dom], here);
        }
        if let Some(cs) = contracts_by_section.get(a.owner.as_str()) {
            for c in cs {
                emit("g", &[&format!("c:{c}"), "contract", dom], Origin::Contract);
            }
        }
        grant_rows(facts, ai32, emit);
        lockdown_rows(facts, ai32, emit);
        emergency_rows(facts, ai32, emit);
    }
}

/// The owner section's rights (SPEC §6, `owner_section`): staff of the owning section may
/// read, print and copy an asset that is neither secret nor My Number data, and create and
/// update it unless its integrity is level 2. They are links like a section's grants, so
/// one lookup answers both.
fn owner_may(a: &AssetFacts, action: Action) -> bool {
    let rights = match action {
        Action::Read | Action::Print | Action::Copy => true,
        Action::Create | Action::Update => !a.integrity_2,
        Action::Delete | Action::Export | Action::Transmit => false,
    };
    rights && !a.my_number && a.tier != Tier::Secret
}

fn locked(facts: &Facts, ai: u32, system: &str) -> bool {
    facts.lockdowns.iter().any(|l| l.covers(ai, system))
}

fn grant_rows(facts: &Facts, ai: u32, emit: &mut dyn FnMut(&str, &[&str], Origin)) {
    let (Some(a), Some(grants)) = (facts.assets.get(ai as usize), facts.grants.get(ai as usize))
    else {
        return;
    };
    let dom = a.id.as_str();
    for (prefix, map) in [
        ("u:", &grants.users),
        ("s:", &grants.sections),
        ("c:", &grants.contracts),
    ] {
        let mut names: Vec<&super::facts::Name> = map.keys().collect();
        names.sort();
        for name in names {
            let Some(entries) = map.get(name) else {
                continue;
            };
            let node = format!("{prefix}{}", encode(name));
            for action in Action::ALL {
                if a.my_number {
                    // One link per purpose; the first grant giving (action, purpose) is
                    // the row's origin.
                    let mut seen: Vec<&str> = Vec::new();
                    for e in entries.iter().filter(|e| e.actions & action.bit() != 0) {
                        for p in e.purposes.iter() {
                            if seen.contains(&p.as_str()) {
                                continue;
                            }
                            seen.push(p);
                            let key = format!("{}/{}", action.as_str(), encode(p));
                            emit("g", &[&node, &key, dom], Origin::Grant(e.order));
                        }
                    }
                } else if let Some(e) = entries.iter().find(|e| e.actions & action.bit() != 0) {
                    // The owner section already holds this link by its rights.
                    if prefix == "s:" && name.as_str() == a.owner && owner_may(a, action) {
                        continue;
                    }
                    emit("g", &[&node, action.as_str(), dom], Origin::Grant(e.order));
                }
            }
        }
    }
}

fn lockdown_rows(facts: &Facts, ai: u32, emit: &mut dyn FnMut(&str, &[&str], Origin)) {
    if facts.lockdowns.is_empty() {
        return;
    }
    let Some(a) = facts.assets.get(ai as usize) else {
        return;
    };
    for h in &a.holders {
        let covering: Vec<(usize, &super::facts::ActiveLockdown)> = facts
            .lockdowns
            .iter()
            .enumerate()
            .filter(|(_, l)| l.covers(ai, h))
            .collect();
        let Some((first, _)) = covering.first() else {
            continue;
        };
        let origin = Origin::Lockdown(u32::try_from(*first).unwrap_or(u32::MAX));
        let sys = format!("y:{h}");
        emit("g", &[&sys, "locked", &a.id], origin);
        // Exempt only from every lockdown that covers the request.
        let mut exempt: Vec<&String> = covering
            .first()
            .map(|(_, l)| {
                l.exempt
                    .iter()
                    .filter(|u| covering.iter().all(|(_, o)| o.exempt.contains(*u)))
                    .collect()
            })
            .unwrap_or_default();
        exempt.sort();
        let fact = format!("exempt:y:{h}");
        for u in exempt {
            emit("g", &[&format!("u:{}", encode(u)), &fact, &a.id], origin);
        }
    }
}

fn emergency_rows(facts: &Facts, ai: u32, emit: &mut dyn FnMut(&str, &[&str], Origin)) {
    let Some(a) = facts.assets.get(ai as usize) else {
        return;
    };
    if !a.availability_2 {
        return;
    }
    let mut users: Vec<(&String, usize)> = Vec::new();
    let mut sections: Vec<(&String, usize)> = Vec::new();
    for (ei, e) in facts.emergencies.iter().enumerate() {
        if !e.covers(ai) {
            continue;
        }
        let mut us: Vec<&String> = e.users.iter().collect();
        us.sort();
        for u in us {
            if !users.iter().any(|(x, _)| *x == u) {
                users.push((u, ei));
            }
        }
        let mut ss: Vec<&String> = e.sections.iter().collect();
        ss.sort();
        for s in ss {
            if !sections.iter().any(|(x, _)| *x == s) {
                sections.push((s, ei));
            }
        }
    }
    for (u, ei) in users {
        emit(
            "g",
            &[&format!("u:{}", encode(u)), "responder", &a.id],
            Origin::Emergency(u32::try_from(ei).unwrap_or(u32::MAX)),
        );
    }
    for (s, ei) in sections {
        emit(
            "g",
            &[&format!("s:{s}"), "responder", &a.id],
            Origin::Emergency(u32::try_from(ei).unwrap_or(u32::MAX)),
        );
    }
}

/// A CSV field: plain when safe, quoted otherwise (values are encoded, so this is rare).
pub fn csv_field(v: &str) -> Cow<'_, str> {
    if v.is_empty() || v.contains([',', '"', '\n']) || v.starts_with(' ') || v.ends_with(' ') {
        Cow::Owned(format!("\"{}\"", v.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(v)
    }
}

/// One `policy.csv` line.
pub fn csv_line(ptype: &str, values: &[&str]) -> String {
    let mut line = String::from(ptype);
    for v in values {
        line.push_str(", ");
        line.push_str(&csv_field(v));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_japanese_and_escapes_csv_breakers() {
        assert_eq!(encode("jumin-kiroku"), "jumin-kiroku");
        assert_eq!(encode("住民記録"), "住民記録");
        assert_eq!(encode("a,b \"c\""), "a%2Cb%20%22c%22");
        assert_eq!(encode("100%"), "100%25");
    }

    #[test]
    fn no_fact_is_spellable_as_a_prefixed_name() {
        for fact in [
            "class:public",
            "class:secret+my_number+integrity2",
            "contract",
            "locked",
            "exempt:y:juki",
            "responder",
            "read",
            "update/x",
        ] {
            for prefix in ["@", "y:", "s:", "c:", "u:"] {
                assert!(!fact.starts_with(prefix), "{fact} vs {prefix}");
            }
        }
    }
}
