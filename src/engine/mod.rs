//! The only module that names Casbin: compiles a validated bundle at a point in time,
//! with the runtime state, into a [`Snapshot`], and decides requests against it.
//!
//! Invariants:
//! - `Snapshot::decide` never fails: any error is a deny (`internal_error`).
//! - An allow needs two independent evaluations to agree: the Casbin enforcer over the
//!   generated policy rows, and the explainer over the facts (which also names the reason,
//!   the rule and the obligations). Disagreement is a deny, counted in
//!   [`Snapshot::disagreements`].
//! - The policy version is the SHA-256 of `model.conf` and `policy.csv` as exported, so
//!   it names exactly what decides, including the state used.

pub mod casbin_model;
pub mod decide;
pub mod facts;
pub mod role_manager;

use crate::policy::Loaded;
use crate::policy::index::Index;
use crate::policy::model::RuntimeState;
use crate::time::Instant;
use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter};
use casbin_model::{MODEL_CONF, Origin, csv_line, encode, for_each_row};
pub use decide::{Decision, Env, Reason, Request, Subject, SubjectKind};
use decide::{TraceStep, Verdict};
use facts::Facts;
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
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// The Casbin request tuple of a request, in `r` order.
pub fn request_tuple(req: &Request) -> [String; 12] {
    let s = &req.subject;
    let b = |v: bool| String::from(if v { "true" } else { "false" });
    // Names carry the prefixes of their kind (see `casbin_model`), so the matcher needs no
    // string concatenation per call.
    let purpose = encode(req.env.purpose().unwrap_or("")).into_owned();
    let actp = if purpose.is_empty() {
        String::new()
    } else {
        format!("{}/{purpose}", req.action.as_str())
    };
    [
        format!("y:{}", req.system),
        format!("u:{}", encode(&s.sub)),
        s.kind.as_str().to_string(),
        format!("s:{}", encode(s.section.as_deref().unwrap_or(""))),
        format!("c:{}", encode(s.contract.as_deref().unwrap_or(""))),
        b(s.mfa),
        req.asset.clone(),
        req.action.as_str().to_string(),
        b(req.env.device_issued),
        purpose,
        b(req.env.break_glass()),
        actp,
    ]
}

/// A decision with everything `policy explain` shows.
#[derive(Debug, serde::Serialize)]
pub struct Explanation {
    pub decision: Decision,
    pub trace: Vec<TraceStep>,
    pub casbin_request: [String; 12],
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
        // Same semantics as casbin's default role manager (property-tested), without its
        // per-call allocations.
        let rm: Arc<parking_lot::RwLock<dyn casbin::RoleManager>> = Arc::new(
            parking_lot::RwLock::new(role_manager::IndexedRoleManager::new(10)),
        );
        enforcer
            .set_role_manager(rm)
            .map_err(|e| CompileError::Model(e.to_string()))?;
        let mut hasher = Sha256::new();
        hasher.update(MODEL_CONF.as_bytes());
        let mut expected = 0usize;
        let mut loaded = 0usize;
        {
            let m = enforcer.get_mut_model();
            let mut writer = CsvWriter::new(&facts, &mut hasher);
            for_each_row(&facts, &mut |ptype, values, origin| {
                writer.row(ptype, values, origin);
                expected += 1;
                let sec = if ptype == "p" { "p" } else { "g" };
                if m.add_policy(sec, ptype, values.iter().map(|v| v.to_string()).collect()) {
                    loaded += 1;
                }
            });
        }
        // Guard against Casbin dropping rows silently (duplicates or malformed rows).
        if loaded != expected {
            return Err(CompileError::RowsDropped { loaded, expected });
        }
        enforcer
            .build_role_links()
            .map_err(|e| CompileError::Model(e.to_string()))?;
        let digest = hex::encode(hasher.finalize());
        let version: Arc<str> = Arc::from(format!("sha256:{}", &digest[..16]));
        Ok(Snapshot {
            facts,
            enforcer,
            version,
            rows: expected,
            disagreements: AtomicU64::new(0),
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

    /// Casbin's verdict; the tuple is moved in, so its strings are not copied again.
    fn casbin_allows(&self, tuple: [String; 12]) -> Option<bool> {
        self.enforcer.enforce(Vec::from(tuple)).ok()
    }

    /// Decides a request. Never fails: an engine error is a deny.
    pub fn decide(&self, req: &Request) -> Decision {
        let verdict = decide::explain(&self.facts, req, None);
        let casbin = self.casbin_allows(request_tuple(req));
        self.finish(req, verdict, casbin)
    }

    /// Decides with the full trace, for `policy explain` and `policy test`.
    pub fn explain(&self, req: &Request) -> Explanation {
        let mut trace = Vec::new();
        let verdict = decide::explain(&self.facts, req, Some(&mut trace));
        let casbin_request = request_tuple(req);
        let casbin_allow = self.casbin_allows(casbin_request.clone());
        Explanation {
            decision: self.finish(req, verdict, casbin_allow),
            trace,
            casbin_request,
            casbin_allow,
        }
    }

    fn finish(&self, req: &Request, verdict: Verdict, casbin: Option<bool>) -> Decision {
        let asset = self.facts.asset(&req.asset).map(|(_, a)| a);
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
            message_ja: ja.to_string(),
            message_en: en.to_string(),
            rule,
            obligations: match (allow, asset) {
                (true, Some(a)) => decide::obligations(a, req.action, reason),
                _ => Vec::new(),
            },
            label: asset.map(|a| a.label.clone()),
            asset: asset.map(|a| decide::AssetLevels {
                confidentiality: a.confidentiality.clone(),
                integrity: a.integrity.clone(),
                availability: a.availability.clone(),
                tier: a.tier,
                my_number: a.my_number,
                owner: a.owner.clone(),
            }),
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
