//! The Casbin model, the policy rows generated from [`Facts`], and the request tuple.
//!
//! Design (see `docs/policy-format.md`, "How decisions are compiled"): the rules of SPEC §6
//! are two policy rows — one `deny` row whose matcher is the disjunction of the deny
//! rules, one `allow` row for the allow rules — under `priority(p.eft) || deny`, so every
//! request is evaluated against at most two rows whatever the size of the city. The
//! register, grants, contracts, lockdowns and emergencies become role links
//! `g(name, fact, asset)` in the asset's own domain: a hash lookup, never a scan.
//!
//! Node names are typed by prefix so that no value from a request can collide with a fact:
//! `@` is the asset itself, `y:` a system, `s:` a section, `c:` a contract, `u:` a user.
//! Casbin's `has_link(a, a)` is true for any `a`, so a name and a fact must never be
//! spellable alike; facts never start with those prefixes. Free text (user ids, purposes)
//! is percent-encoded ([`encode`]) so that a comma or a quote cannot break a CSV row.

use super::facts::Facts;
use crate::policy::model::{Action, Tier};
use std::borrow::Cow;

/// The Casbin model (`model.conf`). The request tuple `r` is what `policy explain` prints.
pub const MODEL_CONF: &str = r##"# sekimori decision model (generated; see docs/policy-format.md)
[request_definition]
r = sys, sub, kind, section, contract, mfa, obj, act, device, purpose, glass, actp

[policy_definition]
p = rule, eft

[role_definition]
g = _, _, _

[policy_effect]
e = priority(p.eft) || deny

[matchers]
# Deny rules, then allow rules (SPEC §6). unknown_asset needs no clause of its own: an asset
# that is not in the register has no holder, so the holder clause denies it.
m = p.rule == "deny" && (!g(r.sys, "holder", r.obj) || g(r.sys, "locked", r.obj) && !g(r.sub, "exempt:" + r.sys, r.obj) || r.kind == "contractor" && !g(r.contract, "contract", r.obj) || r.device != "true" && !g("@", "tier:public", r.obj) || g("@", "my_number", r.obj) && (r.mfa != "true" || r.purpose == "" || r.act == "copy" || r.act == "export" || r.act == "transmit") || r.kind == "contractor" && g("@", "tier:secret", r.obj) && (r.act == "print" || r.act == "copy" || r.act == "export" || r.act == "transmit")) || p.rule == "allow" && (g("@", "tier:public", r.obj) && (r.act == "read" || r.act == "print" || r.act == "copy" || r.act == "export" || r.act == "transmit") || r.kind == "staff" && g(r.section, "owner", r.obj) && !g("@", "my_number", r.obj) && !g("@", "tier:secret", r.obj) && (r.act == "read" || r.act == "print" || r.act == "copy" || (r.act == "create" || r.act == "update") && !g("@", "integrity:2", r.obj)) || g(r.sub, r.act, r.obj) || r.kind == "staff" && g(r.section, r.act, r.obj) || r.kind == "contractor" && g(r.contract, r.act, r.obj) || r.purpose != "" && (g(r.sub, r.actp, r.obj) || r.kind == "staff" && g(r.section, r.actp, r.obj) || r.kind == "contractor" && g(r.contract, r.actp, r.obj)) || r.glass == "true" && r.act == "read" && r.kind == "staff" && (g(r.sub, "responder", r.obj) || g(r.section, "responder", r.obj)))
"##;

/// The two `p` rows, in priority order.
pub const P_ROWS: [[&str; 2]; 2] = [["deny", "deny"], ["allow", "allow"]];

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
        emit("g", &["@", tier_fact(a.tier), dom], here);
        if a.my_number {
            emit("g", &["@", "my_number", dom], here);
        }
        if a.integrity_2() {
            emit("g", &["@", "integrity:2", dom], here);
        }
        let owner = format!("s:{}", a.owner);
        emit("g", &[&owner, "owner", dom], here);
        for h in &a.holders {
            emit("g", &[&format!("y:{h}"), "holder", dom], here);
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

fn tier_fact(t: Tier) -> &'static str {
    match t {
        Tier::Public => "tier:public",
        Tier::Internal => "tier:internal",
        Tier::Secret => "tier:secret",
    }
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
        let mut names: Vec<&String> = map.keys().collect();
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
    if !a.availability_2() {
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
            "tier:public",
            "tier:internal",
            "tier:secret",
            "my_number",
            "integrity:2",
            "owner",
            "holder",
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
