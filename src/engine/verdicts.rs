//! Casbin's verdicts, remembered for one snapshot.
//!
//! Casbin decides by evaluating the matcher (a rhai script) against the request: on the
//! served path it is most of a decision's CPU (BENCHMARKS.md, twelfth round). Its verdict
//! is a pure function of the snapshot's policy and the fifteen values of the Casbin
//! request, so a snapshot may remember it by those values. What makes that safe:
//!
//! - the key is the request's values themselves, written out exactly (each string with its
//!   length, each flag as its own tag), never a hash of them: two different requests cannot
//!   share an entry, and any value a later model adds to the request is in the key without
//!   anyone having to remember it;
//! - the cache belongs to the snapshot: a reload builds a new snapshot with an empty cache,
//!   so a verdict never outlives the policy it was decided under;
//! - only Casbin's verdict is kept. The explainer still runs on every request (it names the
//!   reason, the rule and the obligations), and an allow still needs both to agree;
//! - an evaluation that failed is not kept (it is a deny, and the next request tries again);
//! - it is bounded (`limits.verdict_cache`, by default [`CAPACITY`] entries; 0 turns it
//!   off), evicts by S3-FIFO (`quick_cache`), is sharded, and takes no lock shared by all
//!   requests.

use casbin::rhai::{Dynamic, ImmutableString};
use quick_cache::UnitWeighter;
use quick_cache::sync::Cache;

/// Most verdicts one snapshot keeps by default (`limits.verdict_cache`): about 5 MiB at the
/// city's key sizes. While a reload compiles, two snapshots (and so two caches) are alive.
pub const CAPACITY: usize = 32_768;

/// Tags of the key's encoding: a flag's value, or a string's start.
const FALSE: u8 = 0;
const TRUE: u8 = 1;
const TEXT: u8 = 2;

/// A Casbin request's values, written out exactly (see the module's docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VerdictKey(Box<[u8]>);

impl VerdictKey {
    /// The key of `values`, or `None` when one is neither a flag nor a string (the
    /// request is then decided without the cache).
    pub fn of(values: &[Dynamic]) -> Option<VerdictKey> {
        let mut out = Vec::with_capacity(16 * values.len());
        for v in values {
            if let Ok(flag) = v.as_bool() {
                out.push(if flag { TRUE } else { FALSE });
            } else if let Some(text) = v.read_lock::<ImmutableString>() {
                let len = u32::try_from(text.len()).ok()?;
                out.push(TEXT);
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            } else {
                return None;
            }
        }
        Some(VerdictKey(out.into_boxed_slice()))
    }
}

/// One snapshot's remembered verdicts (none when configured with no room).
pub struct VerdictCache {
    verdicts: Option<Cache<VerdictKey, bool, UnitWeighter, foldhash::fast::RandomState>>,
}

impl std::fmt::Debug for VerdictCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerdictCache")
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for VerdictCache {
    fn default() -> Self {
        VerdictCache::with_capacity(CAPACITY)
    }
}

impl VerdictCache {
    /// Room for `capacity` verdicts; 0 remembers none (every request is evaluated).
    pub fn with_capacity(capacity: usize) -> Self {
        VerdictCache {
            verdicts: (capacity > 0).then(|| {
                Cache::with(
                    capacity,
                    capacity as u64,
                    UnitWeighter,
                    foldhash::fast::RandomState::default(),
                    Default::default(),
                )
            }),
        }
    }

    /// Casbin's verdict on `values`: remembered, or from `evaluate`, which is kept when it
    /// succeeded. `None` (an evaluation that failed) is never kept.
    pub fn verdict(
        &self,
        values: Vec<Dynamic>,
        evaluate: impl FnOnce(Vec<Dynamic>) -> Option<bool>,
    ) -> Option<bool> {
        let Some(verdicts) = &self.verdicts else {
            return evaluate(values);
        };
        let Some(key) = VerdictKey::of(&values) else {
            return evaluate(values);
        };
        if let Some(known) = verdicts.get(&key) {
            crate::metrics::decision_cache(true);
            return Some(known);
        }
        crate::metrics::decision_cache(false);
        let verdict = evaluate(values)?;
        verdicts.insert(key, verdict);
        Some(verdict)
    }

    /// Verdicts held now.
    pub fn len(&self) -> usize {
        self.verdicts.as_ref().map_or(0, Cache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn text(s: &str) -> Dynamic {
        Dynamic::from(ImmutableString::from(s))
    }

    #[test]
    fn keys_are_exact_and_cannot_run_together() {
        let key = |v: Vec<Dynamic>| VerdictKey::of(&v).unwrap();
        // The same strings split differently, a string against a flag, flags swapped.
        assert_ne!(
            key(vec![text("ab"), text("c")]),
            key(vec![text("a"), text("bc")])
        );
        assert_ne!(key(vec![text("true")]), key(vec![Dynamic::from_bool(true)]));
        assert_ne!(key(vec![text("")]), key(vec![Dynamic::from_bool(false)]));
        assert_ne!(
            key(vec![Dynamic::from_bool(true), Dynamic::from_bool(false)]),
            key(vec![Dynamic::from_bool(false), Dynamic::from_bool(true)])
        );
        // A length that could be read as the next field's tag.
        assert_ne!(
            key(vec![text("\u{2}"), text("")]),
            key(vec![text(""), text("\u{2}")])
        );
        assert_eq!(
            key(vec![text("u:e1"), Dynamic::from_bool(true)]),
            key(vec![text("u:e1"), Dynamic::from_bool(true)])
        );
    }

    #[test]
    fn a_value_that_is_neither_flag_nor_string_is_not_cached() {
        assert_eq!(VerdictKey::of(&[Dynamic::from(7_i64)]), None);
        let cache = VerdictCache::with_capacity(8);
        let calls = Cell::new(0);
        for _ in 0..3 {
            let got = cache.verdict(vec![Dynamic::from(7_i64)], |_| {
                calls.set(calls.get() + 1);
                Some(true)
            });
            assert_eq!(got, Some(true));
        }
        assert_eq!(calls.get(), 3, "evaluated every time");
        assert!(cache.is_empty());
    }

    #[test]
    fn a_verdict_is_evaluated_once_and_a_failure_never_kept() {
        let cache = VerdictCache::with_capacity(8);
        let calls = Cell::new(0);
        let ask = |values: Vec<Dynamic>, answer: Option<bool>| {
            cache.verdict(values, |_| {
                calls.set(calls.get() + 1);
                answer
            })
        };
        assert_eq!(ask(vec![text("a")], Some(false)), Some(false));
        // Remembered: the evaluation is not asked again (its different answer is unused).
        assert_eq!(ask(vec![text("a")], Some(true)), Some(false));
        assert_eq!(calls.get(), 1);
        // A failed evaluation is a deny upstream, and is asked again next time.
        assert_eq!(ask(vec![text("b")], None), None);
        assert_eq!(ask(vec![text("b")], Some(true)), Some(true));
        assert_eq!(calls.get(), 3);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn with_no_room_every_request_is_evaluated() {
        let cache = VerdictCache::with_capacity(0);
        let calls = Cell::new(0);
        for _ in 0..3 {
            let got = cache.verdict(vec![text("a")], |_| {
                calls.set(calls.get() + 1);
                Some(true)
            });
            assert_eq!(got, Some(true));
        }
        assert_eq!(calls.get(), 3);
        assert!(cache.is_empty());
    }

    #[test]
    fn it_holds_no_more_than_its_capacity() {
        let cache = VerdictCache::with_capacity(100);
        for i in 0..1_000 {
            cache.verdict(vec![text(&i.to_string())], |_| Some(i % 2 == 0));
        }
        assert!(cache.len() <= 100, "{} verdicts held", cache.len());
        // What is held is still right.
        for i in 0..1_000 {
            let got = cache.verdict(vec![text(&i.to_string())], |_| Some(i % 2 == 0));
            assert_eq!(got, Some(i % 2 == 0));
        }
    }
}
