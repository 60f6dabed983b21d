//! A Casbin role manager with the semantics of casbin's `DefaultRoleManager` (links within a
//! domain, transitive up to a depth, `has_link(a, a)` true, no pattern matching) but stored
//! as hash maps, so `has_link` allocates nothing and never scans: the per-call cost of the
//! `g()` function, called a dozen times per decision, stays small. Property tests compare
//! it with the default role manager.

use casbin::{MatchingFn, RoleManager};
use std::collections::HashMap;

/// The domain of links added without one (casbin's `DEFAULT`).
const DEFAULT_DOMAIN: &str = "DEFAULT";

/// One domain's links: name → the names it links to directly.
type DomainLinks = HashMap<Box<str>, Vec<Box<str>>>;

#[derive(Debug, Default)]
pub struct IndexedRoleManager {
    /// domain → its links.
    links: HashMap<Box<str>, DomainLinks>,
    max_depth: usize,
}

impl IndexedRoleManager {
    /// `max_depth` as casbin's `max_hierarchy_level` (10 by default).
    pub fn new(max_depth: usize) -> Self {
        IndexedRoleManager {
            links: HashMap::new(),
            max_depth,
        }
    }
}

impl RoleManager for IndexedRoleManager {
    fn clear(&mut self) {
        self.links.clear();
    }

    fn add_link(&mut self, name1: &str, name2: &str, domain: Option<&str>) {
        if name1 == name2 {
            return;
        }
        let targets = self
            .links
            .entry(Box::from(domain.unwrap_or(DEFAULT_DOMAIN)))
            .or_default()
            .entry(Box::from(name1))
            .or_default();
        if !targets.iter().any(|t| &**t == name2) {
            targets.push(Box::from(name2));
        }
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
        if let Some(targets) = self
            .links
            .get_mut(domain.unwrap_or(DEFAULT_DOMAIN))
            .and_then(|g| g.get_mut(name1))
        {
            targets.retain(|t| &**t != name2);
        }
        Ok(())
    }

    fn has_link(&self, name1: &str, name2: &str, domain: Option<&str>) -> bool {
        if name1 == name2 {
            return true;
        }
        let Some(graph) = self.links.get(domain.unwrap_or(DEFAULT_DOMAIN)) else {
            return false;
        };
        // casbin's breadth-first search yields `max_depth - 1` levels beyond the start.
        if self.max_depth < 2 {
            return false;
        }
        let Some(first) = graph.get(name1) else {
            return false;
        };
        // Level 1 answers sekimori's links; deeper levels keep casbin's semantics.
        if first.iter().any(|t| &**t == name2) {
            return true;
        }
        let mut frontier: Vec<&str> = first.iter().map(|t| &**t).collect();
        let mut seen: Vec<&str> = vec![name1];
        seen.extend(frontier.iter().copied());
        for _ in 2..self.max_depth {
            let mut next = Vec::new();
            for n in frontier {
                for t in graph.get(n).into_iter().flatten() {
                    if &**t == name2 {
                        return true;
                    }
                    if !seen.contains(&&**t) {
                        seen.push(t);
                        next.push(&**t);
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
        self.links
            .get(domain.unwrap_or(DEFAULT_DOMAIN))
            .and_then(|g| g.get(name))
            .map(|t| t.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default()
    }

    fn get_users(&self, name: &str, domain: Option<&str>) -> Vec<String> {
        self.links
            .get(domain.unwrap_or(DEFAULT_DOMAIN))
            .map(|g| {
                g.iter()
                    .filter(|(_, t)| t.iter().any(|x| &**x == name))
                    .map(|(u, _)| u.to_string())
                    .collect()
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
        for _ in 0..50 {
            let mut ours = IndexedRoleManager::new(10);
            let mut theirs = DefaultRoleManager::new(10);
            let names: Vec<String> = (0..12).map(|i| format!("n{i}")).collect();
            let domains = [None, Some("a1"), Some("a2")];
            for _ in 0..30 {
                let (x, y) = (&names[rng.gen_range(0..12)], &names[rng.gen_range(0..12)]);
                let d = domains[rng.gen_range(0..3)];
                ours.add_link(x, y, d);
                theirs.add_link(x, y, d);
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
