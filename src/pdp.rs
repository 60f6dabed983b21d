//! The policy decision point without a network: decide with the current snapshot, commit
//! the records to the decision log, and only then hand the answers back.
//!
//! Invariants:
//! - Every answer that leaves `check` or `list_accessible` has been committed to the log
//!   first; if the log cannot commit, the caller gets [`PdpError::LogUnavailable`] and no
//!   decision (the service maps it to `UNAVAILABLE`).
//! - All decisions of one call are made against one snapshot, loaded once.
//! - Without a valid policy there are no decisions ([`PdpError::NoPolicy`]).

use crate::engine::{Decision, Env, Request, Snapshot, Subject};
use crate::policy::model::Action;
use arc_swap::ArcSwapOption;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

/// One question of a batch.
#[derive(Debug, Clone)]
pub struct Question {
    pub asset: String,
    pub action: Action,
    pub env: Env,
    pub request_id: Option<String>,
}

/// A decision with its id, as recorded.
#[derive(Debug, Clone)]
pub struct Answer {
    pub decision_id: String,
    pub decision: Decision,
}

/// What the decision log keeps of one decision. The durable, hash-chained log and its
/// canonical encoding are built on this shape (issue: the decision log).
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub decision_id: String,
    pub time: chrono::DateTime<chrono::Utc>,
    pub system: String,
    pub subject: Subject,
    pub asset: String,
    pub action: Action,
    pub env: Env,
    pub allow: bool,
    pub reason: &'static str,
    pub rule: Option<String>,
    pub obligations: Vec<&'static str>,
    pub policy_version: Arc<str>,
    pub request_id: Option<String>,
}

/// The log could not commit: no decision may be given.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the decision log cannot commit")]
pub struct LogError;

pub type CommitFuture<'a> = Pin<Box<dyn Future<Output = Result<(), LogError>> + Send + 'a>>;

/// Where decision records go. `commit` resolves only when the records are durable.
pub trait DecisionLog: Send + Sync {
    fn commit(&self, records: Vec<DecisionRecord>) -> CommitFuture<'_>;
}

/// Keeps the most recent records in memory. Not durable: for tests, and the only log
/// until the durable decision log lands.
#[derive(Debug, Default)]
pub struct MemoryLog {
    records: Mutex<Vec<DecisionRecord>>,
    fail: std::sync::atomic::AtomicBool,
}

const MEMORY_LOG_KEEP: usize = 100_000;

impl MemoryLog {
    pub fn records(&self) -> Vec<DecisionRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
    /// Makes every commit fail (to test that no decision leaves without its record).
    pub fn set_failing(&self, fail: bool) {
        self.fail.store(fail, std::sync::atomic::Ordering::SeqCst);
    }
}

impl DecisionLog for MemoryLog {
    fn commit(&self, records: Vec<DecisionRecord>) -> CommitFuture<'_> {
        Box::pin(async move {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(LogError);
            }
            let mut kept = self.records.lock().map_err(|_| LogError)?;
            kept.extend(records);
            if kept.len() > MEMORY_LOG_KEEP {
                let excess = kept.len() - MEMORY_LOG_KEEP;
                kept.drain(..excess);
            }
            Ok(())
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PdpError {
    #[error("no valid policy is loaded")]
    NoPolicy,
    #[error("the decision log cannot commit")]
    LogUnavailable,
}

/// A page of `list_accessible`.
#[derive(Debug, Clone)]
pub struct AccessiblePage {
    pub assets: Vec<(String, Option<String>, Answer)>,
    /// Register position to continue from, if more assets remain.
    pub next: Option<usize>,
    pub policy_version: Arc<str>,
}

/// Most candidate assets examined for one page; the page may hold fewer than asked, with
/// a continuation, so a large system is listed in bounded steps.
pub const MAX_SCAN_PER_PAGE: usize = 5_000;

pub struct Pdp {
    snapshot: ArcSwapOption<Snapshot>,
    log: Arc<dyn DecisionLog>,
}

impl std::fmt::Debug for Pdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pdp")
            .field(
                "snapshot",
                &self.snapshot.load().as_ref().map(|s| s.version().clone()),
            )
            .finish_non_exhaustive()
    }
}

fn new_decision_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

impl Pdp {
    pub fn new(log: Arc<dyn DecisionLog>) -> Self {
        Pdp {
            snapshot: ArcSwapOption::empty(),
            log,
        }
    }

    /// Swaps in a new snapshot; requests in flight keep the one they loaded.
    pub fn install(&self, snapshot: Snapshot) {
        self.snapshot.store(Some(Arc::new(snapshot)));
    }

    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    /// The registered system a client certificate names, if any.
    pub fn system_for(&self, identities: &[String]) -> Result<Option<String>, PdpError> {
        let snap = self.snapshot().ok_or(PdpError::NoPolicy)?;
        Ok(identities
            .iter()
            .find_map(|i| snap.facts().systems_by_identity.get(i).cloned()))
    }

    fn record(system: &str, subject: &Subject, q: &Question, a: &Answer) -> DecisionRecord {
        let d = &a.decision;
        DecisionRecord {
            decision_id: a.decision_id.clone(),
            time: chrono::Utc::now(),
            system: system.to_string(),
            subject: subject.clone(),
            asset: q.asset.clone(),
            action: q.action,
            env: q.env.clone(),
            allow: d.allow,
            reason: d.reason.as_str(),
            rule: d.rule.as_ref().map(|r| r.id.to_string()),
            obligations: d.obligations.iter().map(|o| o.name()).collect(),
            policy_version: d.policy_version.clone(),
            request_id: q.request_id.clone(),
        }
    }

    /// Decides every question for one subject and commits the records before answering.
    pub async fn check(
        &self,
        system: &str,
        subject: &Subject,
        questions: &[Question],
    ) -> Result<Vec<Answer>, PdpError> {
        let snap = self.snapshot().ok_or(PdpError::NoPolicy)?;
        let mut answers = Vec::with_capacity(questions.len());
        let mut records = Vec::with_capacity(questions.len());
        for q in questions {
            let req = Request {
                system: system.to_string(),
                subject: subject.clone(),
                asset: q.asset.clone(),
                action: q.action,
                env: q.env.clone(),
            };
            let answer = Answer {
                decision_id: new_decision_id(),
                decision: snap.decide(&req),
            };
            records.push(Self::record(system, subject, q, &answer));
            answers.push(answer);
        }
        self.log
            .commit(records)
            .await
            .map_err(|_| PdpError::LogUnavailable)?;
        Ok(answers)
    }

    /// The calling system's assets, from register position `start`, on which the subject
    /// may do `action`: at most `page_size` of them, with where to continue.
    pub async fn list_accessible(
        &self,
        system: &str,
        subject: &Subject,
        action: Action,
        env: &Env,
        start: usize,
        page_size: usize,
    ) -> Result<AccessiblePage, PdpError> {
        let snap = self.snapshot().ok_or(PdpError::NoPolicy)?;
        let facts = snap.facts();
        let held: &[u32] = facts
            .assets_by_system
            .get(system)
            .map_or(&[], Vec::as_slice);
        let mut found = Vec::new();
        let mut records = Vec::new();
        let mut pos = start;
        let mut scanned = 0;
        while pos < held.len() && found.len() < page_size && scanned < MAX_SCAN_PER_PAGE {
            let Some(asset) = held.get(pos).and_then(|&i| facts.assets.get(i as usize)) else {
                break;
            };
            pos += 1;
            scanned += 1;
            let q = Question {
                asset: asset.id.clone(),
                action,
                env: env.clone(),
                request_id: None,
            };
            let req = Request {
                system: system.to_string(),
                subject: subject.clone(),
                asset: asset.id.clone(),
                action,
                env: env.clone(),
            };
            let decision = snap.decide(&req);
            if decision.allow {
                let answer = Answer {
                    decision_id: new_decision_id(),
                    decision,
                };
                records.push(Self::record(system, subject, &q, &answer));
                found.push((asset.id.clone(), asset.name.clone(), answer));
            }
        }
        self.log
            .commit(records)
            .await
            .map_err(|_| PdpError::LogUnavailable)?;
        Ok(AccessiblePage {
            assets: found,
            next: (pos < held.len()).then_some(pos),
            policy_version: snap.version().clone(),
        })
    }
}
