//! The policy decision point without a network: decide with the current snapshot, commit
//! the records to the decision log, and only then hand the answers back.
//!
//! Invariants:
//! - Every answer that leaves `check` or `list_accessible` has been committed to the log
//!   first; if the log cannot commit, the caller gets [`PdpError::LogUnavailable`] and no
//!   decision (the service maps it to `UNAVAILABLE`).
//! - All decisions of one call are made against one snapshot, loaded once.
//! - Without a valid policy there are no decisions ([`PdpError::NoPolicy`]).

use crate::audit::record::{AssetRef, EnvRef, Record, RecordKind, SubjectRef};
use crate::audit::writer::LogWriter;
use crate::engine::{Decision, Env, Request, Snapshot, Subject};
use crate::policy::model::Action;
use arc_swap::ArcSwapOption;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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

pub use crate::audit::writer::LogError;

pub type CommitFuture<'a> = Pin<Box<dyn Future<Output = Result<(), LogError>> + Send + 'a>>;

/// Where records go. `commit` resolves only when the records are durable.
pub trait DecisionLog: Send + Sync {
    fn commit(&self, records: Vec<Record>) -> CommitFuture<'_>;
}

impl DecisionLog for LogWriter {
    fn commit(&self, records: Vec<Record>) -> CommitFuture<'_> {
        Box::pin(self.append(records))
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
    /// Room for remembered verdicts in each snapshot installed (`limits.verdict_cache`).
    verdict_cache: usize,
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

fn subject_ref(s: &Subject) -> SubjectRef {
    SubjectRef {
        sub: s.sub.clone(),
        section: s.section.clone(),
        kind: s.kind.as_str().to_string(),
        contract: s.contract.clone(),
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
            verdict_cache: crate::engine::verdicts::CAPACITY,
        }
    }

    /// Gives each snapshot installed from now on room for `entries` remembered verdicts.
    pub fn with_verdict_cache(mut self, entries: usize) -> Self {
        self.verdict_cache = entries;
        self
    }

    /// Swaps in a new snapshot; requests in flight keep the one they loaded.
    pub fn install(&self, snapshot: Snapshot) {
        let snapshot = snapshot.with_verdict_cache(self.verdict_cache);
        let new_version = snapshot.version().to_string();
        if let Some(old) = self.snapshot.load().as_ref() {
            if **old.version() != *new_version {
                metrics::gauge!("sekimori_policy_info", "version" => old.version().to_string())
                    .set(0.0);
            }
        }
        crate::metrics::policy_version(&new_version);
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

    fn record(system: &str, subject: &Subject, q: &Question, a: &Answer) -> Record {
        let d = &a.decision;
        Record {
            id: a.decision_id.clone(),
            time_us: chrono::Utc::now().timestamp_micros(),
            kind: RecordKind::Decision,
            system: Some(system.to_string()),
            subject: Some(subject_ref(subject)),
            asset: Some(AssetRef {
                id: q.asset.clone(),
                owner: d.asset.as_ref().map(|l| l.owner.to_string()),
                confidentiality: d.asset.as_ref().map(|l| l.confidentiality.to_string()),
                integrity: d.asset.as_ref().map(|l| l.integrity.to_string()),
                availability: d.asset.as_ref().map(|l| l.availability.to_string()),
                tier: d.asset.as_ref().map(|l| l.tier.as_str().to_string()),
                my_number: d.asset.as_ref().map(|l| l.my_number),
            }),
            action: Some(q.action.as_str().to_string()),
            env: Some(EnvRef {
                device_issued: q.env.device_issued,
                purpose: q.env.purpose().map(str::to_string),
                break_glass_reason: q
                    .env
                    .break_glass_reason
                    .clone()
                    .filter(|r| !r.trim().is_empty()),
            }),
            decision: Some(String::from(if d.allow { "allow" } else { "deny" })),
            reason: Some(d.reason.as_str().to_string()),
            rule: d.rule.as_ref().map(|r| r.id.to_string()),
            obligations: d.obligations.iter().map(|o| o.name().to_string()).collect(),
            policy_version: Some(d.policy_version.to_string()),
            request_id: q.request_id.clone(),
            detail: None,
        }
    }

    /// Records a request refused before any decision (unregistered certificate identity,
    /// bad token). The refusal stands whether or not the record commits.
    pub async fn record_rejection(
        &self,
        system: Option<&str>,
        subject: Option<&str>,
        detail: &str,
    ) {
        let mut r = Record::new(RecordKind::Rejected);
        r.system = system.map(str::to_string);
        r.subject = subject.map(|s| SubjectRef {
            sub: s.to_string(),
            ..SubjectRef::default()
        });
        r.detail = Some(detail.to_string());
        let _ = self.log.commit(vec![r]).await;
    }

    /// Records a lifecycle or admin event durably.
    pub async fn record_event(&self, record: Record) -> Result<(), PdpError> {
        self.log
            .commit(vec![record])
            .await
            .map_err(|_| PdpError::LogUnavailable)
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
            crate::metrics::decision(answer.decision.allow, answer.decision.reason.as_str());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SubjectKind;
    use crate::policy::model::RuntimeState;

    /// A log that accepts every record at once.
    struct Accepting;

    impl DecisionLog for Accepting {
        fn commit(&self, _records: Vec<Record>) -> CommitFuture<'_> {
            Box::pin(async { Ok(()) })
        }
    }

    #[test]
    fn each_snapshot_installed_gets_the_configured_room_for_verdicts() {
        let at = crate::time::parse_policy_time("2026-06-01T12:00:00+09:00").expect("time");
        let loaded = crate::policy::load(std::path::Path::new("policies"), at);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let subject = Subject::new(
            "e1010",
            Some("shimin"),
            SubjectKind::Staff,
            None,
            &["pwd".into(), "fpt".into()],
        );
        let question = Question {
            asset: "juki-inkan".into(),
            action: Action::Read,
            env: Env {
                device_issued: true,
                purpose: None,
                break_glass_reason: None,
            },
            request_id: None,
        };
        for (room, remembered) in [(0, 0), (16, 1)] {
            let pdp = Pdp::new(Arc::new(Accepting)).with_verdict_cache(room);
            let snapshot =
                Snapshot::compile(&loaded, at, &RuntimeState::default()).expect("compiles");
            pdp.install(snapshot);
            for _ in 0..2 {
                let answers = rt
                    .block_on(pdp.check("juki", &subject, std::slice::from_ref(&question)))
                    .expect("decided");
                assert!(answers[0].decision.allow, "room {room}");
            }
            let installed = pdp.snapshot().expect("installed");
            assert_eq!(installed.remembered_verdicts(), remembered, "room {room}");
        }
    }
}
