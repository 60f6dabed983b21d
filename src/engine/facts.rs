//! Facts: a validated bundle at one point in time, with the runtime state, reduced to what
//! a decision needs, indexed by asset so that no lookup grows with the size of the city.
//!
//! Both evaluators read these facts: the Casbin policy rows are generated from them
//! (`casbin_model`), and the explainer (`decide`) walks them to name the reason, the rule
//! and the obligations. Only grants, contracts, emergencies and lockdowns in force at `at`
//! are kept; `next_change` says when that set changes next.

use super::decide::AssetLevels;
use super::role_manager::DomainIndex;
use crate::policy::index::Index;
use crate::policy::model::{Action, EmergencyScope, RuntimeState, Tier};
use crate::policy::source::{Location, Span};
use crate::time::Instant;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub use super::role_manager::{FastMap, Name};

/// A hash set with the same fast, randomly seeded hasher as [`FastMap`].
pub type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// A grantee's name → the grants naming it on one asset, in bundle order (usually one).
pub type Grantees = FastMap<Name, smallvec::SmallVec<[GrantEntry; 1]>>;

/// One asset of the register as decisions see it.
#[derive(Debug, Clone)]
pub struct AssetFacts {
    pub id: String,
    pub name: Option<String>,
    pub owner: String,
    pub holders: Vec<String>,
    pub tier: Tier,
    pub my_number: bool,
    /// Integrity level 2 (updates need a backup, owners may not create or update).
    pub integrity_2: bool,
    /// Availability level 2 (emergency responders may read).
    pub availability_2: bool,
    /// The literal levels (e.g. `3B`, `2`), inline: a decision reports them without
    /// allocating.
    pub confidentiality: Name,
    pub integrity: Name,
    pub availability: Name,
    /// `機密性` + the literal level.
    pub label: Name,
}

impl AssetFacts {
    /// The asset's levels as a decision reports them.
    pub fn levels(&self) -> AssetLevels {
        AssetLevels {
            confidentiality: self.confidentiality.clone(),
            integrity: self.integrity.clone(),
            availability: self.availability.clone(),
            tier: self.tier,
            my_number: self.my_number,
            owner: self.owner.as_str().into(),
        }
    }
}

/// Where a rule came from, for decisions and for the exported policy's comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSource {
    pub id: Arc<str>,
    pub location: Option<Location>,
}

/// A grant's contribution to one (asset, principal) pair.
#[derive(Debug, Clone)]
pub struct GrantEntry {
    /// Position of the grant in bundle order: the first applicable grant decides `rule`.
    pub order: u32,
    pub actions: u8,
    /// For `my_number` assets: the purposes the grant serves; empty otherwise.
    pub purposes: Arc<[String]>,
}

/// Grants on one asset, by kind of principal. Lists are in bundle order.
#[derive(Debug, Default, Clone)]
pub struct AssetGrants {
    pub users: Grantees,
    pub sections: Grantees,
    pub contracts: Grantees,
}

/// A lockdown in force, with its section scope expanded to assets.
#[derive(Debug, Clone)]
pub struct ActiveLockdown {
    pub source: RuleSource,
    pub assets: HashSet<u32>,
    pub systems: HashSet<String>,
    pub exempt: HashSet<String>,
}

impl ActiveLockdown {
    pub fn covers(&self, asset: u32, system: &str) -> bool {
        self.assets.contains(&asset) || self.systems.contains(system)
    }
}

/// An emergency in force.
#[derive(Debug, Clone)]
pub struct ActiveEmergency {
    pub source: RuleSource,
    /// `None` = every asset.
    pub assets: Option<HashSet<u32>>,
    pub users: HashSet<String>,
    pub sections: HashSet<String>,
}

impl ActiveEmergency {
    pub fn covers(&self, asset: u32) -> bool {
        self.assets.as_ref().is_none_or(|a| a.contains(&asset))
    }
}

#[derive(Debug, Default)]
pub struct Facts {
    pub at: Option<Instant>,
    pub assets: Vec<AssetFacts>,
    /// Asset id → position in `assets`; shared with the role manager (its domains).
    pub asset_index: Arc<DomainIndex>,
    /// Parallel to `assets`.
    pub grants: Vec<AssetGrants>,
    /// Effective grants in bundle order (`GrantEntry::order` indexes this).
    pub grant_sources: Vec<RuleSource>,
    /// Active contracts → the sections they include (read by every contractor's decision).
    pub contracts: FastMap<String, FastSet<String>>,
    pub lockdowns: Vec<ActiveLockdown>,
    pub emergencies: Vec<ActiveEmergency>,
    /// The next instant after `at` when a grant, contract, emergency or lockdown starts or
    /// ends: the snapshot must be rebuilt then.
    pub next_change: Option<Instant>,
    /// Client certificate identity (URI or DNS SAN) → system id.
    pub systems_by_identity: HashMap<String, String>,
    /// System id → the assets it holds, in register order (for ListAccessible).
    pub assets_by_system: HashMap<String, Vec<u32>>,
    pub counts: Counts,
}

/// Sizes of the bundle, for status and reports.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Counts {
    pub sections: usize,
    pub systems: usize,
    pub assets: usize,
    pub grants: usize,
    pub effective_grants: usize,
    pub contracts: usize,
    pub tests: usize,
}

fn active(from: Instant, until: Option<Instant>, at: Instant) -> bool {
    from <= at && until.is_none_or(|u| at < u)
}

impl Facts {
    pub fn asset(&self, id: &str) -> Option<(u32, &AssetFacts)> {
        let i = *self.asset_index.get(id)?;
        self.assets.get(i as usize).map(|a| (i, a))
    }

    /// Reduces a validated bundle at `at` with `state` to facts.
    pub fn build(
        idx: &Index,
        at: Instant,
        state: &RuntimeState,
        location: &dyn Fn(Span) -> Option<Location>,
    ) -> Facts {
        let bundle = idx.bundle;
        let mut facts = Facts {
            at: Some(at),
            ..Facts::default()
        };
        let mut changes: Vec<Instant> = Vec::new();
        let mut note = |from: Instant, until: Option<Instant>| {
            changes.push(from);
            changes.extend(until);
        };

        for (i, a) in bundle.assets.iter().enumerate() {
            if idx.assets.get(a.id.value.as_str()) != Some(&i) {
                continue;
            }
            let tier = Tier::of_level(&a.confidentiality.value).unwrap_or(Tier::Secret);
            let n = u32::try_from(facts.assets.len()).unwrap_or(u32::MAX);
            Arc::make_mut(&mut facts.asset_index).insert(a.id.value.as_str().into(), n);
            facts.assets.push(AssetFacts {
                id: a.id.value.clone(),
                name: a.name.clone(),
                owner: a.owner.value.clone(),
                holders: a.systems.iter().map(|s| s.value.clone()).collect(),
                tier,
                my_number: a.my_number.value,
                integrity_2: a.integrity.value == "2",
                availability_2: a.availability.value == "2",
                confidentiality: a.confidentiality.value.as_str().into(),
                integrity: a.integrity.value.as_str().into(),
                availability: a.availability.value.as_str().into(),
                label: format!("機密性{}", a.confidentiality.value).into(),
            });
            facts.grants.push(AssetGrants::default());
        }

        for c in &bundle.contracts {
            note(c.valid_from.value, Some(c.valid_until.value));
            if active(c.valid_from.value, Some(c.valid_until.value), at) {
                facts
                    .contracts
                    .entry(c.id.value.clone())
                    .or_insert_with(|| c.sections.iter().map(|s| s.value.clone()).collect());
            }
        }

        for g in &bundle.grants {
            note(g.valid_from.value, Some(g.valid_until.value));
            if !active(g.valid_from.value, Some(g.valid_until.value), at) {
                continue;
            }
            let order = u32::try_from(facts.grant_sources.len()).unwrap_or(u32::MAX);
            facts.grant_sources.push(RuleSource {
                id: Arc::from(g.id.value.as_str()),
                location: location(g.id.span),
            });
            let actions = g.actions.iter().fold(0u8, |m, a| m | a.value.bit());
            let purposes: Arc<[String]> = g.purposes.iter().map(|p| p.value.clone()).collect();
            let no_purposes: Arc<[String]> = Arc::from(Vec::new());
            for bundle_asset in idx.grant_assets(g) {
                let Some(asset_id) = bundle.assets.get(bundle_asset).map(|a| a.id.value.as_str())
                else {
                    continue;
                };
                let Some(&ai) = facts.asset_index.get(asset_id) else {
                    continue;
                };
                let my_number = facts.assets.get(ai as usize).is_some_and(|a| a.my_number);
                let entry = GrantEntry {
                    order,
                    actions,
                    purposes: if my_number {
                        purposes.clone()
                    } else {
                        no_purposes.clone()
                    },
                };
                let Some(slot) = facts.grants.get_mut(ai as usize) else {
                    continue;
                };
                for u in &g.subjects.users {
                    slot.users
                        .entry(u.value.as_str().into())
                        .or_default()
                        .push(entry.clone());
                }
                for s in &g.subjects.sections {
                    slot.sections
                        .entry(s.value.as_str().into())
                        .or_default()
                        .push(entry.clone());
                }
                for c in &g.subjects.contracts {
                    slot.contracts
                        .entry(c.value.as_str().into())
                        .or_default()
                        .push(entry.clone());
                }
            }
        }

        let assets_of_sections =
            |sections: &[crate::policy::model::Spanned<String>], facts: &Facts| -> HashSet<u32> {
                sections
                    .iter()
                    .filter_map(|s| idx.assets_by_owner.get(s.value.as_str()))
                    .flatten()
                    .filter_map(|&bi| bundle.assets.get(bi))
                    .filter_map(|a| facts.asset_index.get(a.id.value.as_str()).copied())
                    .collect()
            };

        for l in &state.lockdowns {
            note(l.from.value, l.until.as_ref().map(|u| u.value));
            if !active(l.from.value, l.until.as_ref().map(|u| u.value), at) {
                continue;
            }
            let mut assets = assets_of_sections(&l.scope.sections, &facts);
            assets.extend(
                l.scope
                    .assets
                    .iter()
                    .filter_map(|a| facts.asset_index.get(a.value.as_str()).copied()),
            );
            facts.lockdowns.push(ActiveLockdown {
                source: RuleSource {
                    id: Arc::from(l.id.value.as_str()),
                    location: location(l.id.span),
                },
                assets,
                systems: l.scope.systems.iter().map(|s| s.value.clone()).collect(),
                exempt: l.exempt.iter().map(|u| u.value.clone()).collect(),
            });
        }
        for e in &state.emergencies {
            note(e.from.value, Some(e.until.value));
            if !active(e.from.value, Some(e.until.value), at) {
                continue;
            }
            let assets = match &e.scope {
                EmergencyScope::All => None,
                EmergencyScope::Sections(s) => Some(assets_of_sections(s, &facts)),
                EmergencyScope::Assets(a) => Some(
                    a.iter()
                        .filter_map(|a| facts.asset_index.get(a.value.as_str()).copied())
                        .collect(),
                ),
            };
            facts.emergencies.push(ActiveEmergency {
                source: RuleSource {
                    id: Arc::from(e.id.value.as_str()),
                    location: location(e.id.span),
                },
                assets,
                users: e.responder_users.iter().map(|u| u.value.clone()).collect(),
                sections: e
                    .responder_sections
                    .iter()
                    .map(|s| s.value.clone())
                    .collect(),
            });
        }

        for s in &bundle.systems {
            facts
                .systems_by_identity
                .entry(s.identity.value.clone())
                .or_insert_with(|| s.id.value.clone());
        }
        for (ai, a) in facts.assets.iter().enumerate() {
            for h in &a.holders {
                facts
                    .assets_by_system
                    .entry(h.clone())
                    .or_default()
                    .push(u32::try_from(ai).unwrap_or(u32::MAX));
            }
        }
        facts.next_change = changes.into_iter().filter(|t| *t > at).min();
        facts.counts = Counts {
            sections: idx.sections.len(),
            systems: idx.systems.len(),
            assets: facts.assets.len(),
            grants: bundle.grants.len(),
            effective_grants: facts.grant_sources.len(),
            contracts: bundle.contracts.len(),
            tests: bundle.tests.len(),
        };
        facts
    }

    /// The first grant (bundle order) on `asset` that gives `action` to one of the
    /// subject's principals, with the purpose check of `my_number` assets.
    pub fn first_grant(
        &self,
        asset: u32,
        principals: &Principals<'_>,
        action: Action,
        purpose: Option<&str>,
    ) -> Option<u32> {
        let grants = self.grants.get(asset as usize)?;
        let my_number = self.assets.get(asset as usize).is_some_and(|a| a.my_number);
        let fits = |e: &&GrantEntry| {
            e.actions & action.bit() != 0
                && (!my_number || purpose.is_some_and(|p| e.purposes.iter().any(|gp| gp == p)))
        };
        let mut best: Option<u32> = None;
        let mut consider = |list: Option<&smallvec::SmallVec<[GrantEntry; 1]>>| {
            if let Some(e) = list.and_then(|l| l.iter().find(fits)) {
                best = Some(best.map_or(e.order, |b| b.min(e.order)));
            }
        };
        consider(grants.users.get(principals.user));
        if let Some(s) = principals.section {
            consider(grants.sections.get(s));
        }
        if let Some(c) = principals.contract {
            consider(grants.contracts.get(c));
        }
        best
    }
}

/// The keys a subject is granted under: always its user id; its section if staff; its
/// contract if a contractor.
#[derive(Debug, Clone, Copy)]
pub struct Principals<'a> {
    pub user: &'a str,
    pub section: Option<&'a str>,
    pub contract: Option<&'a str>,
}
