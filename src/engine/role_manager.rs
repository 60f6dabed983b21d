//! A Casbin role manager with the semantics of casbin's `DefaultRoleManager` (links within a
//! domain, transitive up to a depth, `has_link(a, a)` true, no pattern matching) but stored
//! per domain as one sorted vector of `(name, target)` pairs, so `has_link` allocates
//! nothing and reads one domain's few links, side by side in memory: the per-call cost of
//! the `g()` function, called several times per decision, stays small. Property tests
//! compare it with the default role manager.
//!
//! sekimori's domains are the assets of the register. Their links sit in a vector by
//! register position, found through the same asset index the explainer uses: a decision
//! looks its asset up once in memory both evaluators then find in cache, instead of in a
//! second map of 100,000 domains.

use casbin::{MatchingFn, RoleManager};
use std::collections::HashMap;
use std::sync::Arc;

/// The domain of links added without one (casbin's `DEFAULT`).
const DEFAULT_DOMAIN: &str = "DEFAULT";

/// A hash map with a fast, randomly seeded hasher (role names and asset ids are short).
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A name, a fact or a domain: up to 23 bytes inline (almost every one of sekimori's), so
/// a lookup compares keys without following a pointer to another cache line.
pub type Name = smartstring::alias::String;

/// Domain (asset id) → position, shared with the facts.
pub type DomainIndex = FastMap<Name, u32>;

/// One domain's links, `(name, target)` pairs sorted, side by side in one allocation (a
/// city's domain has 8 links at the median, 60 at most): the `g()` calls of a decision read
/// the same few cache lines instead of probing a hash table once each.
type DomainLinks = Vec<(Name, Name)>;

/// Up to this many links a domain is scanned: at a city's sizes (at most 60) a scan was
/// measured faster than a binary search's string comparisons (BENCHMARKS.md). A larger
/// one — an asset granted to many people by name — is binary-searched, so no `g()` call
/// grows with the number of grants.
const SCAN_AT_MOST: usize = 64;

/// Where `(name, target)` is, or would be inserted, in `links`.
fn find(links: &DomainLinks, name: &str, target: &str) -> Result<usize, usize> {
    links.binary_search_by(|(n, t)| (n.as_str(), t.as_str()).cmp(&(name, target)))
}

/// Whether `links` holds `(name, target)`.
fn holds(links: &DomainLinks, name: &str, target: &str) -> bool {
    if links.len() <= SCAN_AT_MOST {
        links.iter().any(|(n, t)| n == name && t == target)
    } else {
        find(links, name, target).is_ok()
    }
}

/// The names `name` links to directly in `links`.
fn targets<'a>(links: &'a DomainLinks, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let first = links.partition_point(|(n, _)| n.as_str() < name);
    links[first..]
        .iter()
        .take_while(move |(n, _)| n.as_str() == name)
        .map(|(_, t)| t.as_str())
}

#[derive(Debug, Default)]
pub struct IndexedRoleManager {
    /// The links of the domains in `index`, by position.
    indexed: Vec<DomainLinks>,
    index: Arc<DomainIndex>,
    /// The links of any other domain.
    other: FastMap<Name, DomainLinks>,
    max_depth: usize,
}

impl IndexedRoleManager {
    /// `max_depth` as casbin's `max_hierarchy_level` (10 by default).
    pub fn new(max_depth: usize) -> Self {
        Self::with_domains(max_depth, Arc::default())
    }

    /// A role manager whose domains in `index` are stored by position.
    pub fn with_domains(max_depth: usize, index: Arc<DomainIndex>) -> Self {
        IndexedRoleManager {
            indexed: Vec::new(),
            index,
            other: FastMap::default(),
            max_depth,
        }
    }

    fn domain(&self, domain: &str) -> Option<&DomainLinks> {
        match self.index.get(domain) {
            Some(&i) => self.indexed.get(i as usize),
            None => self.other.get(domain),
        }
    }

    fn domain_mut(&mut self, domain: &str) -> &mut DomainLinks {
        if let Some(&i) = self.index.get(domain) {
            let i = i as usize;
            if self.indexed.len() <= i {
                self.indexed.resize_with(i + 1, DomainLinks::default);
            }
            return &mut self.indexed[i];
        }
        self.other.entry(Name::from(domain)).or_default()
    }

    /// Adds the link `name → fact` in `domain`; false when it was already there (or links
    /// a name to itself, which casbin treats as always linked).
    pub fn insert(&mut self, name: &str, fact: &str, domain: &str) -> bool {
        if name == fact {
            return false;
        }
        let links = self.domain_mut(domain);
        match find(links, name, fact) {
            Ok(_) => false,
            Err(at) => {
                links.insert(at, (Name::from(name), Name::from(fact)));
                true
            }
        }
    }
}

impl RoleManager for IndexedRoleManager {
    fn clear(&mut self) {
        self.indexed.clear();
        self.other.clear();
    }

    fn add_link(&mut self, name1: &str, name2: &str, domain: Option<&str>) {
        self.insert(name1, name2, domain.unwrap_or(DEFAULT_DOMAIN));
    }

    fn matching_fn(
        &mut self,
        _role_matching_fn: Option<MatchingFn>,
        _domain_matching_fn: Option<MatchingFn>,
    ) {
        // Pattern matching is never used by sekimori's model; names match exactly.
    }

    fn delete_link(
        &mut self,
        name1: &str,
        name2: &str,
        domain: Option<&str>,
    ) -> casbin::Result<()> {
        let links = self.domain_mut(domain.unwrap_or(DEFAULT_DOMAIN));
        if let Ok(at) = find(links, name1, name2) {
            links.remove(at);
        }
        Ok(())
    }

    fn has_link(&self, name1: &str, name2: &str, domain: Option<&str>) -> bool {
        if name1 == name2 {
            return true;
        }
        let Some(graph) = self.domain(domain.unwrap_or(DEFAULT_DOMAIN)) else {
            return false;
        };
        // casbin's breadth-first search yields `max_depth - 1` levels beyond the start.
        if self.max_depth < 2 {
            return false;
        }
        // Level 1 answers sekimori's links; deeper levels keep casbin's semantics.
        if holds(graph, name1, name2) {
            return true;
        }
        // sekimori's links never chain (their targets are facts, not names): answer without
        // allocating the search below when no target links further.
        let links_further = |t: &str| targets(graph, t).next().is_some();
        if !targets(graph, name1).any(links_further) {
            return false;
        }
        let mut frontier: Vec<&str> = targets(graph, name1).collect();
        let mut seen: Vec<&str> = vec![name1];
        seen.extend(frontier.iter().copied());
        for _ in 2..self.max_depth {
            let mut next = Vec::new();
            for n in frontier {
                for t in targets(graph, n) {
                    if t == name2 {
                        return true;
                    }
                    if !seen.contains(&t) {
                        seen.push(t);
                        next.push(t);
                    }
                }
            }
            if next.is_empty() {
                return false;
            }
            frontier = next;
        }
        false
    }

    fn get_roles(&self, name: &str, domain: Option<&str>) -> Vec<String> {
        self.domain(domain.unwrap_or(DEFAULT_DOMAIN))
            .map(|g| targets(g, name).map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn get_users(&self, name: &str, domain: Option<&str>) -> Vec<String> {
        self.domain(domain.unwrap_or(DEFAULT_DOMAIN))
            .map(|g| {
                let mut users: Vec<String> = Vec::new();
                for (u, _) in g.iter().filter(|(_, t)| t == name) {
                    if !users.iter().any(|x| x == u.as_str()) {
                        users.push(u.to_string());
                    }
                }
                users
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casbin::DefaultRoleManager;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// Random link sets and queries: the indexed manager answers `has_link` exactly as
    /// casbin's default one, chains and cycles included.
    #[test]
    fn agrees_with_casbins_default_role_manager() {
        let mut rng = SmallRng::seed_from_u64(42);
        for round in 0..50 {
            // Half the rounds keep domain `a1` in the shared index (stored by position).
            let mut index = DomainIndex::default();
            if round % 2 == 0 {
                index.insert(Name::from("a1"), 0);
            }
            let mut ours = IndexedRoleManager::with_domains(10, Arc::new(index));
            let mut theirs = DefaultRoleManager::new(10);
            let names: Vec<String> = (0..16).map(|i| format!("n{i}")).collect();
            let domains = [None, Some("a1"), Some("a2")];
            // Some rounds fill domains past `SCAN_AT_MOST`, so both lookups are compared.
            let links = if round % 5 == 0 { 400 } else { 30 };
            let mut added = Vec::new();
            for _ in 0..links {
                let (x, y) = (&names[rng.gen_range(0..16)], &names[rng.gen_range(0..16)]);
                let d = domains[rng.gen_range(0..3)];
                ours.add_link(x, y, d);
                theirs.add_link(x, y, d);
                added.push((x, y, d));
            }
            // And some links removed again from both.
            for (x, y, d) in added.iter().step_by(7) {
                ours.delete_link(x, y, *d).expect("delete");
                let _ = theirs.delete_link(x, y, *d);
            }
            for x in names.iter().chain([String::from("unknown")].iter()) {
                for y in &names {
                    for d in domains.iter().chain([Some("nowhere")].iter()) {
                        assert_eq!(
                            ours.has_link(x, y, *d),
                            theirs.has_link(x, y, *d),
                            "{x} → {y} in {d:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn depth_is_bounded_like_casbin() {
        for depth in 0..6 {
            let mut ours = IndexedRoleManager::new(depth);
            let mut theirs = DefaultRoleManager::new(depth);
            for (a, b) in [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")] {
                ours.add_link(a, b, None);
                theirs.add_link(a, b, None);
            }
            for target in ["b", "c", "d", "e"] {
                assert_eq!(
                    ours.has_link("a", target, None),
                    theirs.has_link("a", target, None),
                    "depth {depth}, {target}"
                );
            }
        }
    }
}
