//! Rules that span entries and files (SPEC §4 "Validation"): references, uniqueness,
//! zones, dates, the grant rules and the warnings. Pure: a bundle and a point in time in,
//! diagnostics out.

use super::diag::Diagnostic;
use super::index::Index;
use super::model::*;
use crate::time::{Instant, jst_date};
use std::collections::{HashMap, HashSet};

pub mod codes {
    pub const DUPLICATE_ID: &str = "policy::id::duplicate";
    pub const UNKNOWN_SECTION: &str = "policy::ref::unknown_section";
    pub const UNKNOWN_SYSTEM: &str = "policy::ref::unknown_system";
    pub const UNKNOWN_ASSET: &str = "policy::ref::unknown_asset";
    pub const UNKNOWN_CONTRACT: &str = "policy::ref::unknown_contract";
    pub const LEVEL_NOT_IN_SCHEME: &str = "policy::asset::level_not_in_scheme";
    pub const DUPLICATE_IDENTITY: &str = "policy::system::duplicate_identity";
    pub const MY_NUMBER_OUTSIDE_ZONE: &str = "policy::zone::my_number_outside_mynumber";
    pub const MIXED_ZONES: &str = "policy::zone::mixed_zones";
    pub const MY_NUMBER_PUBLIC: &str = "policy::asset::my_number_public";
    pub const UNTIL_NOT_AFTER_FROM: &str = "policy::date::until_not_after_from";
    pub const APPROVER_NOT_CHIEF: &str = "policy::grant::approver_not_chief";
    pub const APPROVER_IS_GRANTEE: &str = "policy::grant::approver_is_grantee";
    pub const SECRET_TO_SECTIONS: &str = "policy::grant::secret_to_sections";
    pub const FORBIDDEN_BY_HARD_RULE: &str = "policy::grant::forbidden_by_hard_rule";
    pub const MY_NUMBER_WITHOUT_PURPOSES: &str = "policy::grant::my_number_without_purposes";
    pub const CONTRACT_SECTION_MISMATCH: &str = "policy::grant::outside_contract_sections";
    pub const OUTSIDE_CONTRACT_VALIDITY: &str = "policy::grant::outside_contract_validity";
    pub const TEST_UNKNOWN_SYSTEM: &str = "policy::test::unknown_system";
    pub const EMERGENCY_TOO_LONG: &str = "policy::state::emergency_too_long";
    // Warnings.
    pub const LONG_VALIDITY: &str = "policy::grant::long_validity";
    pub const GRANT_EXPIRED: &str = "policy::grant::expired";
    pub const CONTRACT_EXPIRED: &str = "policy::contract::expired";
    pub const REVIEW_OVERDUE: &str = "policy::asset::review_overdue";
    pub const SECRET_UNGRANTED: &str = "policy::asset::secret_ungranted";
    pub const SELECTOR_EMPTY: &str = "policy::grant::selector_matches_nothing";
}

/// Longest validity of a grant before a warning, in days.
pub const MAX_GRANT_DAYS: i64 = 366;
/// Longest emergency, in hours (SPEC §6).
pub const MAX_EMERGENCY_HOURS: i64 = 72;

/// Checks everything that spans entries. `at` is the time for warnings (expired, overdue).
pub fn validate(bundle: &Bundle, at: Instant) -> Vec<Diagnostic> {
    let idx = Index::new(bundle);
    let mut out = Vec::new();
    organization(bundle, &mut out);
    systems(&idx, &mut out);
    assets(&idx, at, &mut out);
    contracts(&idx, at, &mut out);
    grants(&idx, at, &mut out);
    for t in &bundle.tests {
        if !idx.systems.contains_key(t.system.value.as_str()) {
            out.push(
                Diagnostic::error(
                    codes::TEST_UNKNOWN_SYSTEM,
                    t.system.span,
                    format!("test names unknown system `{}`", t.system.value),
                )
                .value(t.system.value.clone())
                .hint("use a system id from systems.yaml"),
            );
        }
        state(&idx, &t.state, &mut out);
    }
    out
}

fn duplicate(kind: &str, id: &Spanned<String>) -> Diagnostic {
    Diagnostic::error(
        codes::DUPLICATE_ID,
        id.span,
        format!("{kind} id `{}` is used twice", id.value),
    )
    .value(id.value.clone())
    .label("second use")
    .hint(format!("{kind} ids are unique; rename one of them"))
}

fn check_unique<'a>(
    kind: &str,
    ids: impl Iterator<Item = &'a Spanned<String>>,
    out: &mut Vec<Diagnostic>,
) {
    let mut seen: HashSet<&str> = HashSet::new();
    for id in ids {
        if !seen.insert(&id.value) {
            out.push(duplicate(kind, id));
        }
    }
}

fn unknown(code: &'static str, kind: &str, id: &Spanned<String>, hint: &str) -> Diagnostic {
    Diagnostic::error(code, id.span, format!("unknown {kind} `{}`", id.value))
        .value(id.value.clone())
        .hint(hint.to_string())
}

fn section_ref(idx: &Index, id: &Spanned<String>, out: &mut Vec<Diagnostic>) -> bool {
    let ok = idx.sections.contains_key(id.value.as_str());
    if !ok {
        out.push(unknown(
            codes::UNKNOWN_SECTION,
            "section",
            id,
            "use a section id from organization.yaml",
        ));
    }
    ok
}

fn organization(bundle: &Bundle, out: &mut Vec<Diagnostic>) {
    let Some(org) = &bundle.organization else {
        return;
    };
    check_unique("department", org.departments.iter().map(|d| &d.id), out);
    check_unique("section", bundle.sections().map(|s| &s.id), out);
}

fn systems(idx: &Index, out: &mut Vec<Diagnostic>) {
    let systems = &idx.bundle.systems;
    check_unique("system", systems.iter().map(|s| &s.id), out);
    let mut identities: HashMap<&str, &str> = HashMap::new();
    for s in systems {
        section_ref(idx, &s.owner, out);
        if let Some(other) = identities.get(s.identity.value.as_str()) {
            out.push(
                Diagnostic::error(
                    codes::DUPLICATE_IDENTITY,
                    s.identity.span,
                    format!(
                        "identity `{}` is already system `{other}`'s",
                        s.identity.value
                    ),
                )
                .value(s.identity.value.clone())
                .hint("each system has its own client certificate identity (URI or DNS SAN)"),
            );
        } else {
            identities.insert(&s.identity.value, &s.id.value);
        }
    }
}

fn assets(idx: &Index, at: Instant, out: &mut Vec<Diagnostic>) {
    let bundle = idx.bundle;
    check_unique("asset", bundle.assets.iter().map(|a| &a.id), out);
    let today = jst_date(at);
    let covered: HashSet<usize> = bundle
        .grants
        .iter()
        .flat_map(|g| idx.grant_assets(g))
        .collect();
    for (i, a) in bundle.assets.iter().enumerate() {
        section_ref(idx, &a.owner, out);
        let conf_ok = level(
            idx.scheme.confidentiality_levels(),
            &a.confidentiality,
            "confidentiality",
            out,
        );
        level(&Scheme::INTEGRITY_LEVELS, &a.integrity, "integrity", out);
        level(
            &Scheme::AVAILABILITY_LEVELS,
            &a.availability,
            "availability",
            out,
        );
        let mut zones: Vec<(&Spanned<String>, Zone)> = Vec::new();
        for sys in &a.systems {
            match idx.systems.get(sys.value.as_str()) {
                Some(s) => zones.push((sys, s.zone.value)),
                None => out.push(unknown(
                    codes::UNKNOWN_SYSTEM,
                    "system",
                    sys,
                    "use a system id from systems.yaml",
                )),
            }
        }
        if a.my_number.value {
            for (sys, zone) in &zones {
                if *zone != Zone::MyNumber {
                    out.push(
                        Diagnostic::error(codes::MY_NUMBER_OUTSIDE_ZONE, sys.span, format!("my_number asset `{}` is held by `{}` in zone `{}`", a.id.value, sys.value, zone.as_str()))
                            .value(sys.value.clone())
                            .hint("特定個人情報 may only be held by systems in the `mynumber` zone (マイナンバー利用事務系)"),
                    );
                }
            }
            if conf_ok && Tier::of_level(&a.confidentiality.value) == Some(Tier::Public) {
                out.push(
                    Diagnostic::error(
                        codes::MY_NUMBER_PUBLIC,
                        a.confidentiality.span,
                        format!("my_number asset `{}` has confidentiality `1`", a.id.value),
                    )
                    .value(a.confidentiality.value.clone())
                    .hint("an asset holding individual numbers is at least confidentiality 2"),
                );
            }
        }
        if let Some((first_sys, first_zone)) = zones.first() {
            for (sys, zone) in zones.iter().skip(1) {
                if zone != first_zone {
                    out.push(
                        Diagnostic::error(
                            codes::MIXED_ZONES,
                            sys.span,
                            format!(
                                "`{}` is in zone `{}` but `{}` is in `{}`",
                                sys.value,
                                zone.as_str(),
                                first_sys.value,
                                first_zone.as_str()
                            ),
                        )
                        .value(sys.value.clone())
                        .hint("an asset's systems are all in one network zone (ネットワーク分離)"),
                    );
                }
            }
        }
        if let Some(review) = &a.review_by {
            if review.value < today {
                out.push(
                    Diagnostic::warning(
                        codes::REVIEW_OVERDUE,
                        review.span,
                        format!(
                            "asset `{}` was due for review on {}",
                            a.id.value, review.value
                        ),
                    )
                    .value(review.value.to_string())
                    .hint(
                        "the section chief reviews the classification and sets a new `review_by`",
                    ),
                );
            }
        }
        if conf_ok
            && Tier::of_level(&a.confidentiality.value) == Some(Tier::Secret)
            && !covered.contains(&i)
        {
            out.push(
                Diagnostic::warning(
                    codes::SECRET_UNGRANTED,
                    a.id.span,
                    format!("secret asset `{}` is covered by no grant", a.id.value),
                )
                .value(a.id.value.clone())
                .hint(
                    "nobody can reach it; add a grant to the handlers, or check the classification",
                ),
            );
        }
    }
}

fn level(levels: &[&str], value: &Spanned<String>, what: &str, out: &mut Vec<Diagnostic>) -> bool {
    let ok = levels.contains(&value.value.as_str());
    if !ok {
        out.push(
            Diagnostic::error(
                codes::LEVEL_NOT_IN_SCHEME,
                value.span,
                format!("{what} level `{}` is not in the scheme", value.value),
            )
            .value(value.value.clone())
            .hint(format!("{what} levels here: {}", levels.join(", "))),
        );
    }
    ok
}

fn dates(
    from: &Spanned<Instant>,
    until: &Spanned<Instant>,
    what: &str,
    out: &mut Vec<Diagnostic>,
) -> bool {
    let ok = until.value > from.value;
    if !ok {
        out.push(
            Diagnostic::error(
                codes::UNTIL_NOT_AFTER_FROM,
                until.span,
                format!("{what} ends before it starts"),
            )
            .hint("`valid_until` is exclusive and must be after `valid_from`"),
        );
    }
    ok
}

fn contracts(idx: &Index, at: Instant, out: &mut Vec<Diagnostic>) {
    check_unique("contract", idx.bundle.contracts.iter().map(|c| &c.id), out);
    for c in &idx.bundle.contracts {
        for s in &c.sections {
            section_ref(idx, s, out);
        }
        if dates(&c.valid_from, &c.valid_until, "the contract", out) && c.valid_until.value <= at {
            out.push(
                Diagnostic::warning(
                    codes::CONTRACT_EXPIRED,
                    c.valid_until.span,
                    format!("contract `{}` has expired", c.id.value),
                )
                .hint("remove it, or extend `valid_until` if the contract was renewed"),
            );
        }
    }
}

fn grants(idx: &Index, at: Instant, out: &mut Vec<Diagnostic>) {
    let bundle = idx.bundle;
    check_unique("grant", bundle.grants.iter().map(|g| &g.id), out);
    for g in &bundle.grants {
        // References.
        for s in &g.subjects.sections {
            section_ref(idx, s, out);
        }
        for c in &g.subjects.contracts {
            if !idx.contracts.contains_key(c.value.as_str()) {
                out.push(unknown(
                    codes::UNKNOWN_CONTRACT,
                    "contract",
                    c,
                    "use a contract id from contracts.yaml",
                ));
            }
        }
        match &g.assets {
            AssetSelection::List(ids) => {
                for id in ids {
                    if !idx.assets.contains_key(id.value.as_str()) {
                        out.push(unknown(
                            codes::UNKNOWN_ASSET,
                            "asset",
                            id,
                            "use an asset id from assets/",
                        ));
                    }
                }
            }
            AssetSelection::Select {
                owner,
                max_confidentiality,
                ..
            } => {
                if let Some(o) = owner {
                    section_ref(idx, o, out);
                }
                if let Some(level_value) = max_confidentiality {
                    level(
                        idx.scheme.confidentiality_levels(),
                        level_value,
                        "confidentiality",
                        out,
                    );
                }
            }
        }
        let dates_ok = dates(&g.valid_from, &g.valid_until, "the grant", out);
        let covered = idx.grant_assets(g);

        if let AssetSelection::Select { span, .. } = &g.assets {
            if covered.is_empty() {
                out.push(
                    Diagnostic::warning(
                        codes::SELECTOR_EMPTY,
                        *span,
                        format!("the selector of grant `{}` matches no asset", g.id.value),
                    )
                    .hint("check `owner` and `max_confidentiality`"),
                );
            }
        }

        approver(idx, g, &covered, out);
        if let Some(u) = g
            .subjects
            .users
            .iter()
            .find(|u| u.value == g.approved_by.value)
        {
            out.push(
                Diagnostic::error(codes::APPROVER_IS_GRANTEE, u.span, format!("`{}` approves a grant to themself", u.value))
                    .value(u.value.clone())
                    .hint("separation of duties: another approver (the chief or the CISO) signs this grant"),
            );
        }

        let mut is_my_number = false;
        for &i in &covered {
            let Some(a) = bundle.assets.get(i) else {
                continue;
            };
            let tier = idx.tier(i);
            if tier == Some(Tier::Secret) && !g.subjects.sections.is_empty() {
                if let Some(first) = g.subjects.sections.first() {
                    out.push(
                        Diagnostic::error(
                            codes::SECRET_TO_SECTIONS,
                            first.span,
                            format!("secret asset `{}` is granted to whole sections", a.id.value),
                        )
                        .value(a.id.value.clone())
                        .hint("grant secret (機密性3) assets to named `users` or `contracts` only"),
                    );
                }
            }
            if a.my_number.value {
                is_my_number = true;
                for act in g
                    .actions
                    .iter()
                    .filter(|x| x.value.leaves_my_number_system())
                {
                    out.push(
                        Diagnostic::error(codes::FORBIDDEN_BY_HARD_RULE, act.span, format!("`{}` of my_number asset `{}` is never allowed", act.value, a.id.value))
                            .value(act.value.to_string())
                            .hint("特定個人情報 is not copied, exported or transmitted; remove the action or the asset"),
                    );
                }
            }
            if tier == Some(Tier::Secret) && !g.subjects.contracts.is_empty() {
                for act in g.actions.iter().filter(|x| x.value.is_output()) {
                    out.push(
                        Diagnostic::error(
                            codes::FORBIDDEN_BY_HARD_RULE,
                            act.span,
                            format!(
                                "contractors may not `{}` secret asset `{}`",
                                act.value, a.id.value
                            ),
                        )
                        .value(act.value.to_string())
                        .hint("output actions on secret assets are never granted to contracts"),
                    );
                }
            }
            for c in &g.subjects.contracts {
                let Some(contract) = idx
                    .contracts
                    .get(c.value.as_str())
                    .and_then(|&ci| bundle.contracts.get(ci))
                else {
                    continue;
                };
                if !contract.sections.iter().any(|s| s.value == a.owner.value) {
                    out.push(
                        Diagnostic::error(
                            codes::CONTRACT_SECTION_MISMATCH,
                            c.span,
                            format!(
                                "asset `{}` of `{}` is outside contract `{}`",
                                a.id.value, a.owner.value, c.value
                            ),
                        )
                        .value(c.value.clone())
                        .hint("a contract grant covers only assets of the contract's sections"),
                    );
                }
            }
        }
        if is_my_number && g.purposes.is_empty() {
            out.push(
                Diagnostic::error(codes::MY_NUMBER_WITHOUT_PURPOSES, g.assets_span, format!("grant `{}` covers a my_number asset but names no `purposes`", g.id.value))
                    .hint("add `purposes: [...]`: the 事務 this grant serves (番号法: use is limited to the stated purpose)"),
            );
        }
        if dates_ok {
            for c in &g.subjects.contracts {
                let Some(contract) = idx
                    .contracts
                    .get(c.value.as_str())
                    .and_then(|&ci| bundle.contracts.get(ci))
                else {
                    continue;
                };
                if g.valid_from.value < contract.valid_from.value
                    || g.valid_until.value > contract.valid_until.value
                {
                    out.push(
                        Diagnostic::error(codes::OUTSIDE_CONTRACT_VALIDITY, c.span, format!("grant `{}` is valid outside contract `{}`", g.id.value, c.value))
                            .value(c.value.clone())
                            .hint("the grant's validity lies within the contract's `valid_from`..`valid_until`"),
                    );
                }
            }
            let days = (g.valid_until.value - g.valid_from.value).num_days();
            if days > MAX_GRANT_DAYS {
                out.push(
                    Diagnostic::warning(
                        codes::LONG_VALIDITY,
                        g.valid_until.span,
                        format!("grant `{}` is valid for {days} days", g.id.value),
                    )
                    .hint(format!(
                        "grants are renewed at least yearly: at most {MAX_GRANT_DAYS} days"
                    )),
                );
            }
            if g.valid_until.value <= at {
                out.push(
                    Diagnostic::warning(
                        codes::GRANT_EXPIRED,
                        g.valid_until.span,
                        format!("grant `{}` has expired", g.id.value),
                    )
                    .hint("remove it, or renew it with a new approval"),
                );
            }
        }
    }
}

fn approver(idx: &Index, g: &Grant, covered: &[usize], out: &mut Vec<Diagnostic>) {
    let approver = g.approved_by.value.as_str();
    if idx.ciso == Some(approver) {
        return;
    }
    let ciso_hint = "a grant is approved by the chief (課長) of the section owning every asset it covers, or by the CISO";
    if let AssetSelection::Select { owner: None, .. } = g.assets {
        out.push(
            Diagnostic::error(
                codes::APPROVER_NOT_CHIEF,
                g.approved_by.span,
                format!("`{approver}` may not approve a selector over all sections"),
            )
            .value(approver.to_string())
            .hint("a selector without `owner` spans every section: only the CISO approves it"),
        );
        return;
    }
    for &i in covered {
        let Some(a) = idx.bundle.assets.get(i) else {
            continue;
        };
        let Some(section) = idx.sections.get(a.owner.value.as_str()) else {
            continue;
        };
        if section.chief.value != approver {
            out.push(
                Diagnostic::error(
                    codes::APPROVER_NOT_CHIEF,
                    g.approved_by.span,
                    format!(
                        "`{approver}` is not the chief of `{}`, which owns `{}`",
                        section.id.value, a.id.value
                    ),
                )
                .value(approver.to_string())
                .hint(ciso_hint),
            );
            return;
        }
    }
}

fn state(idx: &Index, state: &RuntimeState, out: &mut Vec<Diagnostic>) {
    for e in &state.emergencies {
        match &e.scope {
            EmergencyScope::All => {}
            EmergencyScope::Sections(s) => s.iter().for_each(|s| {
                section_ref(idx, s, out);
            }),
            EmergencyScope::Assets(a) => asset_refs(idx, a, out),
        }
        for s in &e.responder_sections {
            section_ref(idx, s, out);
        }
        if dates(&e.from, &e.until, "the emergency", out)
            && e.until.value - e.from.value > chrono::Duration::hours(MAX_EMERGENCY_HOURS)
        {
            out.push(
                Diagnostic::error(
                    codes::EMERGENCY_TOO_LONG,
                    e.until.span,
                    format!(
                        "emergency `{}` lasts more than {MAX_EMERGENCY_HOURS} hours",
                        e.id.value
                    ),
                )
                .hint("declare a new emergency when the first one ends"),
            );
        }
    }
    for l in &state.lockdowns {
        asset_refs(idx, &l.scope.assets, out);
        for s in &l.scope.sections {
            section_ref(idx, s, out);
        }
        for s in &l.scope.systems {
            if !idx.systems.contains_key(s.value.as_str()) {
                out.push(unknown(
                    codes::UNKNOWN_SYSTEM,
                    "system",
                    s,
                    "use a system id from systems.yaml",
                ));
            }
        }
        if let Some(until) = &l.until {
            dates(&l.from, until, "the lockdown", out);
        }
    }
}

fn asset_refs(idx: &Index, ids: &[Spanned<String>], out: &mut Vec<Diagnostic>) {
    for id in ids {
        if !idx.assets.contains_key(id.value.as_str()) {
            out.push(unknown(
                codes::UNKNOWN_ASSET,
                "asset",
                id,
                "use an asset id from assets/",
            ));
        }
    }
}
