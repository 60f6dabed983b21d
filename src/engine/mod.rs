//! The only module that names Casbin: compiles a validated bundle at a point in time,
//! with the runtime state, into a [`Snapshot`], and decides requests against it.
//!
//! Invariants:
//! - `Snapshot::decide` never fails: any error is a deny (`internal_error`).
//! - An allow needs two independent evaluations to agree: the Casbin enforcer over the
//!   generated policy rows, and the explainer over the facts (which also names the reason,
//!   the rule and the obligations). Disagreement is a deny, counted in
//!   [`Snapshot::disagreements`].
//! - Casbin's verdict is remembered per snapshot by the request's exact values
//!   ([`verdicts`]); the explainer runs on every request, remembered or not.
//! - The policy version is the SHA-256 of `model.conf` and `policy.csv` as exported, so
//!   it names exactly what decides, including the state used.

pub mod casbin_model;
pub mod decide;
pub mod facts;
pub mod role_manager;
pub mod verdicts;

use crate::policy::Loaded;
use crate::policy::index::Index;
use crate::policy::model::{RuntimeState, Tier};
use crate::time::Instant;
use casbin::rhai::{Dynamic, ImmutableString};
use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter};
use casbin_model::{MODEL_CONF, Origin, REQUEST_FIELDS, csv_line, encode, for_each_row};
pub use decide::{Decision, Env, Reason, Request, Subject, SubjectKind};
use decide::{TraceStep, Verdict};
use facts::{AssetFacts, Facts};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a snapshot could not be built.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("the bundle has errors; run `sekimori policy check` to see them")]
    InvalidBundle,
    #[error("the Casbin model was refused: {0}")]
    Model(String),
    #[error("Casbin did not load every policy row ({loaded} of {expected})")]
    RowsDropped { loaded: usize, expected: usize },
}

/// A compiled policy at one point in time: immutable, shared by all requests.
pub struct Snapshot {
    facts: Facts,
    enforcer: Enforcer,
    version: Arc<str>,
    rows: usize,
    disagreements: AtomicU64,
    /// Casbin's verdicts on the requests this snapshot has decided (`verdicts`).
    verdicts: verdicts::VerdictCache,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// The Casbin request of a decision, in `r` order ([`REQUEST_FIELDS`]): strings and
/// booleans, as `policy explain` prints them and as the exported model expects them.
#[derive(Debug, Clone)]
pub struct CasbinRequest(Vec<Dynamic>);

impl CasbinRequest {
    /// The values, in `r` order, as Casbin takes them.
    pub fn values(&self) -> &[Dynamic] {
        &self.0
    }

    /// Each field by name, as text (`true`/`false` for booleans).
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, CasbinValue)> + '_ {
        REQUEST_FIELDS.into_iter().zip(self.0.iter().map(|v| {
            match (v.as_bool(), v.read_lock::<ImmutableString>()) {
                (Ok(b), _) => CasbinValue::Flag(b),
                (_, Some(s)) => CasbinValue::Text(s.to_string()),
                _ => CasbinValue::Text(v.to_string()),
            }
        }))
    }
}

/// One field of a [`CasbinRequest`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum CasbinValue {
    Text(String),
    Flag(bool),
}

impl serde::Serialize for CasbinRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.fields().map(|(_, v)| v))
    }
}

/// The fixed strings of a request (actions, classes), made once and found by position: a
/// request shares them instead of allocating or looking up its own.
struct Constants {
    empty: ImmutableString,
    /// `s:`, `c:`: the name of no section, no contract.
    no_section: ImmutableString,
    no_contract: ImmutableString,
    actions: [ImmutableString; 8],
    classes: Vec<ImmutableString>,
}

static CONSTANTS: std::sync::LazyLock<Constants> = std::sync::LazyLock::new(|| Constants {
    empty: ImmutableString::new(),
    no_section: ImmutableString::from("s:"),
    no_contract: ImmutableString::from("c:"),
    actions: crate::policy::model::Action::ALL.map(|a| ImmutableString::from(a.as_str())),
    classes: casbin_model::all_classes()
        .map(ImmutableString::from)
        .collect(),
});

impl Snapshot {
    /// The Casbin request of `req`. The asset's levels and class come from the register
    /// (empty for an asset that is not in it, which no link matches).
    pub fn casbin_request(&self, req: &Request) -> CasbinRequest {
        self.casbin_request_about(req, self.facts.asset(&req.asset).map(|(_, a)| a))
    }

    /// [`Snapshot::casbin_request`] with the asset already looked up.
    fn casbin_request_about(&self, req: &Request, asset: Option<&AssetFacts>) -> CasbinRequest {
        let s = &req.subject;
        let constants = &*CONSTANTS;
        let text = |v: &str| Dynamic::from(ImmutableString::from(v));
        let prefixed = |prefix: &str, v: &str| {
            let mut t = String::with_capacity(prefix.len() + v.len());
            t.push_str(prefix);
            t.push_str(&encode(v));
            Dynamic::from(ImmutableString::from(t))
        };
        let flag = Dynamic::from_bool;
        let act = req.action;
        let tier = asset.map(|a| a.tier);
        let my_number = asset.is_some_and(|a| a.my_number);
        // Names carry the prefixes of their kind (see `casbin_model`), so the matcher needs
        // no string concatenation per call. Only My Number assets have links keyed by
        // action and purpose; for them an empty `actp` means no purpose was given.
        let actp = match req.env.purpose() {
            Some(purpose) if my_number => text(&format!("{}/{}", act.as_str(), encode(purpose))),
            _ => Dynamic::from(constants.empty.clone()),
        };
        let class = asset.map_or_else(
            || constants.empty.clone(),
            |a| constants.classes[casbin_model::class_position(a)].clone(),
        );
        CasbinRequest(vec![
            s.contract.as_deref().map_or_else(
                || Dynamic::from(constants.no_contract.clone()),
                |v| prefixed("c:", v),
            ),
            actp,
            flag(s.mfa),
            flag(tier == Some(Tier::Secret)),
            flag(req.env.break_glass()),
            flag(req.env.device_issued),
            flag(tier == Some(Tier::Public)),
            prefixed("y:", &req.system),
            Dynamic::from(class),
            prefixed("u:", &s.sub),
            s.section.as_deref().map_or_else(
                || Dynamic::from(constants.no_section.clone()),
                |v| prefixed("s:", v),
            ),
            flag(my_number),
            flag(s.kind == SubjectKind::Contractor),
            Dynamic::from(constants.actions[act as usize].clone()),
            text(&req.asset),
        ])
    }
}

/// A decision with everything `policy explain` shows.
#[derive(Debug, serde::Serialize)]
pub struct Explanation {
    pub decision: Decision,
    pub trace: Vec<TraceStep>,
    pub casbin_request: CasbinRequest,
    pub casbin_allow: Option<bool>,
}

impl Snapshot {
    /// Compiles a valid bundle at `at` with `state`.
    pub fn compile(
        loaded: &Loaded,
        at: Instant,
        state: &RuntimeState,
    ) -> Result<Snapshot, CompileError> {
        if !loaded.is_valid() {
            return Err(CompileError::InvalidBundle);
        }
        let bundle = &loaded.bundle;
        let idx = Index::new(bundle);
        let facts = Facts::build(&idx, at, state, &|span| {
            (!span.is_none()).then(|| bundle.sources.location(span))
        });
        Snapshot::from_facts(facts)
    }

    pub fn from_facts(facts: Facts) -> Result<Snapshot, CompileError> {
        let model = pollster::block_on(DefaultModel::from_str(MODEL_CONF))
            .map_err(|e| CompileError::Model(e.to_string()))?;
        let mut enforcer = pollster::block_on(Enforcer::new_raw(model, MemoryAdapter::default()))
            .map_err(|e| CompileError::Model(e.to_string()))?;
        let mut hasher = Sha256::new();
        hasher.update(MODEL_CONF.as_bytes());
        let mut expected = 0usize;
        let mut loaded = 0usize;
        // The role links go straight into the role manager (same semantics as casbin's
        // default one, property-tested, without its per-call allocations). Casbin would
        // otherwise keep a second copy of every `g` row in its model — ≈ 270 MiB at city
        // scale — that no decision reads.
        let mut links =
            role_manager::IndexedRoleManager::with_domains(10, facts.asset_index.clone());
        {
            let m = enforcer.get_mut_model();
            let mut writer = CsvWriter::new(&facts, &mut hasher);
            for_each_row(&facts, &mut |ptype, values, origin| {
                writer.row(ptype, values, origin);
                expected += 1;
                let added = match (ptype, values) {
                    ("g", [name, fact, domain]) => links.insert(name, fact, domain),
                    ("p", _) => {
                        m.add_policy("p", "p", values.iter().map(|v| v.to_string()).collect())
                    }
                    _ => false,
                };
                loaded += usize::from(added);
            });
        }
        // Guard against rows dropped silently (duplicates or malformed rows).
        if loaded != expected {
            return Err(CompileError::RowsDropped { loaded, expected });
        }
        enforcer.enable_auto_build_role_links(false);
        let rm: Arc<parking_lot::RwLock<dyn casbin::RoleManager>> =
            Arc::new(parking_lot::RwLock::new(links));
        enforcer
            .set_role_manager(rm)
            .map_err(|e| CompileError::Model(e.to_string()))?;
        let digest = hex::encode(hasher.finalize());
        let version: Arc<str> = Arc::from(format!("sha256:{}", &digest[..16]));
        Ok(Snapshot {
            facts,
            enforcer,
            version,
            rows: expected,
            disagreements: AtomicU64::new(0),
            verdicts: verdicts::VerdictCache::default(),
        })
    }

    pub fn version(&self) -> &Arc<str> {
        &self.version
    }

    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// Number of Casbin policy rows (`p` and `g`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// How many decisions were denied because Casbin and the explainer disagreed.
    pub fn disagreements(&self) -> u64 {
        self.disagreements.load(Ordering::Relaxed)
    }

    /// Casbin's verdict; the request is moved in, so its strings are not copied again.
    fn casbin_allows(&self, request: CasbinRequest) -> Option<bool> {
        self.enforcer.enforce(request.0).ok()
    }

    /// Decides a request, as the service does: Casbin's verdict comes from the snapshot's
    /// [`verdicts::VerdictCache`] when it has decided the same Casbin request before. Never
    /// fails: an engine error is a deny.
    pub fn decide(&self, req: &Request) -> Decision {
        self.decide_with(req, true)
    }

    /// Decides a request with Casbin evaluating it afresh: what a decision costs the engine
    /// (the benchmarks' distinct requests), and the reference the cached path is tested
    /// against.
    pub fn decide_uncached(&self, req: &Request) -> Decision {
        self.decide_with(req, false)
    }

    fn decide_with(&self, req: &Request, cached: bool) -> Decision {
        // The explainer looks the asset up on its own (it is the independent evaluation);
        // the Casbin request and the answer share one lookup.
        let verdict = decide::explain(&self.facts, req, None);
        let asset = self.facts.asset(&req.asset).map(|(_, a)| a);
        let request = self.casbin_request_about(req, asset);
        let casbin = if cached {
            self.verdicts.verdict(request.0, |values| {
                self.casbin_allows(CasbinRequest(values))
            })
        } else {
            self.casbin_allows(request)
        };
        self.finish(req, verdict, casbin, asset)
    }

    /// The snapshot with room for `entries` remembered verdicts (0: none), set before it
    /// serves.
    pub fn with_verdict_cache(mut self, entries: usize) -> Snapshot {
        self.verdicts = verdicts::VerdictCache::with_capacity(entries);
        self
    }

    /// Casbin verdicts this snapshot remembers.
    pub fn remembered_verdicts(&self) -> usize {
        self.verdicts.len()
    }

    /// Decides with the full trace, for `policy explain` and `policy test`.
    pub fn explain(&self, req: &Request) -> Explanation {
        let mut trace = Vec::new();
        let verdict = decide::explain(&self.facts, req, Some(&mut trace));
        let asset = self.facts.asset(&req.asset).map(|(_, a)| a);
        let casbin_request = self.casbin_request_about(req, asset);
        let casbin_allow = self.casbin_allows(casbin_request.clone());
        Explanation {
            decision: self.finish(req, verdict, casbin_allow, asset),
            trace,
            casbin_request,
            casbin_allow,
        }
    }

    fn finish(
        &self,
        req: &Request,
        verdict: Verdict,
        casbin: Option<bool>,
        asset: Option<&AssetFacts>,
    ) -> Decision {
        let agreed = casbin == Some(verdict.reason.is_allow());
        let (reason, rule) = if agreed {
            (verdict.reason, verdict.rule)
        } else {
            self.disagreements.fetch_add(1, Ordering::Relaxed);
            (Reason::InternalError, None)
        };
        let allow = reason.is_allow();
        let (ja, en) = reason.messages();
        Decision {
            allow,
            reason,
            message_ja: ja,
            message_en: en,
            rule,
            obligations: match (allow, asset) {
                (true, Some(a)) => decide::obligations(a, req.action, reason),
                _ => Vec::new(),
            },
            label: asset.map(|a| a.label.clone()),
            asset: asset.map(AssetFacts::levels),
            policy_version: self.version.clone(),
        }
    }

    /// Writes `model.conf` and `policy.csv` (with provenance comments) into `dir`.
    pub fn export(&self, dir: &std::path::Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("model.conf"), MODEL_CONF)?;
        let file = std::fs::File::create(dir.join("policy.csv"))?;
        let mut out = std::io::BufWriter::new(file);
        let mut sink = Sha256::new();
        let mut writer = CsvWriter::new(&self.facts, &mut sink);
        let mut err = None;
        for_each_row(&self.facts, &mut |ptype, values, origin| {
            let text = writer.row(ptype, values, origin);
            if err.is_none() {
                if let Err(e) = out.write_all(text.as_bytes()) {
                    err = Some(e);
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        out.flush()
    }
}

/// Writes `policy.csv` lines with a `#` comment naming each row group's origin, into the
/// digest and returns them for export.
struct CsvWriter<'a> {
    facts: &'a Facts,
    hasher: &'a mut Sha256,
    last: Option<Origin>,
}

impl<'a> CsvWriter<'a> {
    fn new(facts: &'a Facts, hasher: &'a mut Sha256) -> Self {
        CsvWriter {
            facts,
            hasher,
            last: None,
        }
    }

    fn row(&mut self, ptype: &str, values: &[&str], origin: Origin) -> String {
        let mut text = String::new();
        if self.last != Some(origin) {
            self.last = Some(origin);
            text.push_str(&self.comment(origin));
            text.push('\n');
        }
        text.push_str(&csv_line(ptype, values));
        text.push('\n');
        self.hasher.update(text.as_bytes());
        text
    }

    fn comment(&self, origin: Origin) -> String {
        let f = self.facts;
        let src = |s: &facts::RuleSource| match &s.location {
            Some(l) => format!("{} ({l})", s.id),
            None => s.id.to_string(),
        };
        match origin {
            Origin::Model => {
                String::from("# the decision rules (SPEC §6): deny rules first, then allow rules")
            }
            Origin::Asset(i) => f.assets.get(i as usize).map_or_else(String::new, |a| {
                format!(
                    "# asset {} {} owner={} {}",
                    a.id,
                    a.name.as_deref().unwrap_or(""),
                    a.owner,
                    a.label
                )
            }),
            Origin::Grant(g) => f
                .grant_sources
                .get(g as usize)
                .map_or_else(String::new, |s| format!("# grant {}", src(s))),
            Origin::Contract => String::from("# contracts in force"),
            Origin::Lockdown(l) => f
                .lockdowns
                .get(l as usize)
                .map_or_else(String::new, |s| format!("# lockdown {}", src(&s.source))),
            Origin::Emergency(e) => f
                .emergencies
                .get(e as usize)
                .map_or_else(String::new, |s| format!("# emergency {}", src(&s.source))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::Action;
    use casbin_model::class;

    /// `action` on `asset` by staff `sub` of its owner section, through its first holder,
    /// with MFA, a city device and a purpose; `None` for an asset no system holds.
    fn owner_staff_request(asset: &AssetFacts, sub: &str, action: Action) -> Option<Request> {
        Some(Request {
            system: asset.holders.first()?.clone(),
            subject: Subject::new(
                sub,
                Some(&asset.owner),
                SubjectKind::Staff,
                None,
                &["pwd".into(), "otp".into()],
            ),
            asset: asset.id.clone(),
            action,
            env: Env {
                device_issued: true,
                purpose: Some("test".into()),
                break_glass_reason: None,
            },
        })
    }

    fn sample() -> Snapshot {
        let at = crate::time::parse_policy_time("2026-06-01T12:00:00+09:00").expect("time");
        let loaded = crate::policy::load(std::path::Path::new("policies"), at);
        Snapshot::compile(&loaded, at, &RuntimeState::default()).expect("the sample compiles")
    }

    /// Casbin checks the asset's attributes the request carries against the register: one
    /// link holds only for the class the register gives the asset.
    #[test]
    fn casbin_denies_a_request_whose_asset_attributes_are_not_the_registers() {
        let snap = sample();
        let facts = snap.facts();
        let mut allowed = 0;
        for (ai, asset) in facts.assets.iter().enumerate() {
            let Some(req) = owner_staff_request(asset, "tester", Action::Read) else {
                continue;
            };
            let honest = snap.casbin_request(&req);
            if snap.casbin_allows(honest.clone()) != Some(true) {
                continue;
            }
            allowed += 1;
            let cls = REQUEST_FIELDS
                .iter()
                .position(|f| *f == "cls")
                .expect("cls");
            let field = |name: &str| REQUEST_FIELDS.iter().position(|f| *f == name).expect(name);
            for other in casbin_model::all_classes().filter(|c| *c != class(asset)) {
                let mut forged = honest.clone();
                forged.0[cls] = Dynamic::from(ImmutableString::from(other));
                assert_eq!(
                    snap.casbin_allows(forged),
                    Some(false),
                    "asset #{ai} {} allowed with class {other}",
                    asset.id
                );
            }
            // Attributes that disagree with the class fact are not believed either: a
            // public tier with the asset's real class still needs the real class link, and
            // the holder link of another asset's class is absent.
            let mut forged = honest.clone();
            forged.0[field("public")] = Dynamic::from(true);
            forged.0[field("secret")] = Dynamic::from(false);
            forged.0[field("mn")] = Dynamic::from(false);
            forged.0[cls] = Dynamic::from(ImmutableString::from("class:public"));
            if class(asset) != "class:public" {
                assert_eq!(snap.casbin_allows(forged), Some(false), "{}", asset.id);
            }
        }
        assert!(
            allowed > 5,
            "only {allowed} owner reads allowed in the sample"
        );
    }

    /// The owner section's rights are compiled into links (`s:OWNER, ACTION, ASSET`): for
    /// every asset and action, Casbin allows staff of the owner section exactly when the
    /// explainer does, and only the rights SPEC §6 gives them come from ownership.
    #[test]
    fn owner_rights_are_links_that_agree_with_the_explainer() {
        let snap = sample();
        let mut by_ownership = 0;
        for asset in &snap.facts().assets {
            for action in Action::ALL {
                let Some(req) = owner_staff_request(asset, "nobody-named", action) else {
                    continue;
                };
                let e = snap.explain(&req);
                assert_eq!(
                    e.casbin_allow,
                    Some(e.decision.allow),
                    "{} {action:?}: {:?}",
                    asset.id,
                    e.decision.reason
                );
                if e.decision.reason == Reason::OwnerSection {
                    by_ownership += 1;
                    assert!(!asset.my_number && asset.tier != crate::policy::model::Tier::Secret);
                    assert!(matches!(
                        action,
                        Action::Read
                            | Action::Print
                            | Action::Copy
                            | Action::Create
                            | Action::Update
                    ));
                    if matches!(action, Action::Create | Action::Update) {
                        assert!(!asset.integrity_2, "{}", asset.id);
                    }
                }
            }
        }
        assert_eq!(snap.disagreements(), 0);
        assert!(
            by_ownership > 20,
            "only {by_ownership} allowed by ownership"
        );
    }
}
