//! Lookups over a decoded bundle: ids to entries, and the assets a grant covers.
//!
//! Built once per bundle and shared by validation and compilation, so both agree on what
//! an id or a selector means. When an id is written twice the first entry wins (the
//! second is an error reported by validation).

use super::model::{AssetSelection, Bundle, Grant, Scheme, Section, System, Tier};
use std::collections::HashMap;

#[derive(Debug)]
pub struct Index<'b> {
    pub bundle: &'b Bundle,
    pub scheme: Scheme,
    pub ciso: Option<&'b str>,
    pub sections: HashMap<&'b str, &'b Section>,
    pub systems: HashMap<&'b str, &'b System>,
    /// Asset id → position in `bundle.assets`.
    pub assets: HashMap<&'b str, usize>,
    pub contracts: HashMap<&'b str, usize>,
    /// Section id → its assets, in bundle order.
    pub assets_by_owner: HashMap<&'b str, Vec<usize>>,
}

impl<'b> Index<'b> {
    pub fn new(bundle: &'b Bundle) -> Self {
        let mut sections = HashMap::new();
        for s in bundle.sections() {
            sections.entry(s.id.value.as_str()).or_insert(s);
        }
        let mut systems = HashMap::new();
        for s in &bundle.systems {
            systems.entry(s.id.value.as_str()).or_insert(s);
        }
        let mut assets = HashMap::new();
        let mut assets_by_owner: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, a) in bundle.assets.iter().enumerate() {
            if assets.contains_key(a.id.value.as_str()) {
                continue;
            }
            assets.insert(a.id.value.as_str(), i);
            assets_by_owner
                .entry(a.owner.value.as_str())
                .or_default()
                .push(i);
        }
        let mut contracts = HashMap::new();
        for (i, c) in bundle.contracts.iter().enumerate() {
            contracts.entry(c.id.value.as_str()).or_insert(i);
        }
        Index {
            bundle,
            scheme: bundle.scheme(),
            ciso: bundle
                .organization
                .as_ref()
                .and_then(|o| o.ciso.as_ref())
                .map(|c| c.value.as_str()),
            sections,
            systems,
            assets,
            contracts,
            assets_by_owner,
        }
    }

    /// Tier of an asset's confidentiality, if its level is in the scheme.
    pub fn tier(&self, asset: usize) -> Option<Tier> {
        let a = self.bundle.assets.get(asset)?;
        self.scheme.confidentiality_rank(&a.confidentiality.value)?;
        Tier::of_level(&a.confidentiality.value)
    }

    /// The assets a grant covers, in bundle order; unknown ids are left out (validation
    /// reports them).
    pub fn grant_assets(&self, grant: &Grant) -> Vec<usize> {
        match &grant.assets {
            AssetSelection::List(ids) => {
                let mut out: Vec<usize> = ids
                    .iter()
                    .filter_map(|id| self.assets.get(id.value.as_str()).copied())
                    .collect();
                out.dedup();
                out
            }
            AssetSelection::Select {
                owner,
                max_confidentiality,
                ..
            } => {
                let max_rank = match max_confidentiality {
                    Some(level) => match self.scheme.confidentiality_rank(&level.value) {
                        Some(r) => Some(r),
                        // An unknown level selects nothing; validation reports it.
                        None => return Vec::new(),
                    },
                    None => None,
                };
                let fits = |i: &usize| {
                    let Some(a) = self.bundle.assets.get(*i) else {
                        return false;
                    };
                    match (
                        max_rank,
                        self.scheme.confidentiality_rank(&a.confidentiality.value),
                    ) {
                        (None, _) => true,
                        (Some(max), Some(r)) => r <= max,
                        (Some(_), None) => false,
                    }
                };
                match owner {
                    Some(o) => self
                        .assets_by_owner
                        .get(o.value.as_str())
                        .map(|v| v.iter().copied().filter(fits).collect())
                        .unwrap_or_default(),
                    None => {
                        let mut all: Vec<usize> =
                            self.assets.values().copied().filter(fits).collect();
                        all.sort_unstable();
                        all
                    }
                }
            }
        }
    }
}
