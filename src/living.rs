//! The living policy: files, runtime state and time → the snapshot in force.
//!
//! One place changes what decides: a reload of the files (watcher, SIGHUP, the Reload RPC),
//! a change of state (emergencies, lockdowns), and the clock reaching the next window
//! change. Each compiles off the request path and swaps the snapshot atomically; requests
//! in flight finish on the snapshot they loaded. A broken edit keeps the last good version
//! serving. Every reload and every state change is recorded in the decision log; a state
//! change is stored durably and recorded before it takes effect.

use crate::audit::record::{Record, RecordKind, SubjectRef};
use crate::engine::Snapshot;
use crate::pdp::Pdp;
use crate::policy::Loaded;
use crate::policy::decode::is_valid_id;
use crate::policy::diag::Severity;
use crate::state::{EmergencyRec, LockdownRec, StateFile};
use crate::time::{Instant, format_jst};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use tokio::sync::Mutex;

/// One diagnostic of a reload, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadDiagnostic {
    pub severity: &'static str,
    pub code: String,
    pub location: String,
    pub message: String,
}

/// The outcome of the last reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// `ok`, `invalid` (kept the last good version) or `error`.
    pub outcome: &'static str,
    pub at: Instant,
    pub trigger: String,
    pub diagnostics: Vec<ReloadDiagnostic>,
    pub policy_version: String,
}

/// What status shows of the loaded bundle.
#[derive(Debug, Clone, Default)]
pub struct LoadedInfo {
    pub loaded_at: Option<Instant>,
    pub files: Vec<(String, String)>,
}

/// Why an admin change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("{0}")]
    Invalid(String),
    #[error("`{0}` is already in use")]
    Exists(String),
    #[error("no `{0}` is in force")]
    NotFound(String),
    #[error("the change could not be stored or recorded; nothing changed")]
    Unavailable,
}

/// Most diagnostics kept in status.
const STATUS_DIAGNOSTICS: usize = 50;

pub struct Living {
    policy_dir: PathBuf,
    state_path: PathBuf,
    pdp: Arc<Pdp>,
    loaded: RwLock<Arc<Loaded>>,
    info: RwLock<LoadedInfo>,
    last_reload: RwLock<Option<ReloadOutcome>>,
    /// Serializes every change (reload, recompile, state) so they never interleave.
    state: Mutex<StateFile>,
}

impl std::fmt::Debug for Living {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Living")
            .field("policy_dir", &self.policy_dir)
            .finish_non_exhaustive()
    }
}

fn file_hashes(loaded: &Loaded) -> Vec<(String, String)> {
    loaded
        .bundle
        .sources
        .iter()
        .filter(|(_, f)| {
            !f.text.is_empty() || f.path.ends_with(".yaml") || f.path.ends_with(".yml")
        })
        .map(|(_, f)| {
            (
                f.path.clone(),
                hex::encode(Sha256::digest(f.text.as_bytes())),
            )
        })
        .collect()
}

fn diagnostics_of(loaded: &Loaded) -> Vec<ReloadDiagnostic> {
    loaded
        .diagnostics
        .all()
        .iter()
        .take(STATUS_DIAGNOSTICS)
        .map(|d| ReloadDiagnostic {
            severity: match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            },
            code: d.code.to_string(),
            location: loaded.bundle.sources.location(d.span).to_string(),
            message: d.message.clone(),
        })
        .collect()
}

impl Living {
    /// Starts from a valid bundle and the stored state; installs the first snapshot.
    pub fn start(
        policy_dir: PathBuf,
        state_path: PathBuf,
        pdp: Arc<Pdp>,
        loaded: Loaded,
        state: StateFile,
    ) -> Result<Living, crate::engine::CompileError> {
        let now = chrono::Utc::now();
        let snapshot = Snapshot::compile(&loaded, now, &state.to_runtime())?;
        pdp.install(snapshot);
        let info = LoadedInfo {
            loaded_at: Some(now),
            files: file_hashes(&loaded),
        };
        Ok(Living {
            policy_dir,
            state_path,
            pdp,
            loaded: RwLock::new(Arc::new(loaded)),
            info: RwLock::new(info),
            last_reload: RwLock::new(None),
            state: Mutex::new(state),
        })
    }

    pub fn pdp(&self) -> &Arc<Pdp> {
        &self.pdp
    }

    pub fn loaded(&self) -> Arc<Loaded> {
        self.loaded
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn info(&self) -> LoadedInfo {
        self.info.read().map(|i| i.clone()).unwrap_or_default()
    }

    pub fn last_reload(&self) -> Option<ReloadOutcome> {
        self.last_reload.read().ok().and_then(|r| r.clone())
    }

    pub async fn state(&self) -> StateFile {
        self.state.lock().await.clone()
    }

    async fn compile(&self, loaded: Arc<Loaded>, state: &StateFile) -> Result<Snapshot, String> {
        let runtime = state.to_runtime();
        tokio::task::spawn_blocking(move || {
            Snapshot::compile(&loaded, chrono::Utc::now(), &runtime)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
    }

    /// Re-reads the files. Valid: compiled and swapped in. Invalid: the last good version
    /// keeps serving. Either way the outcome is recorded and shown in status.
    pub async fn reload_files(&self, trigger: &str) -> ReloadOutcome {
        let state = self.state.lock().await;
        let dir = self.policy_dir.clone();
        let now = chrono::Utc::now();
        let loaded =
            tokio::task::spawn_blocking(move || crate::policy::load(&dir, chrono::Utc::now()))
                .await;
        let outcome = match loaded {
            Err(_) => ReloadOutcome {
                outcome: "error",
                at: now,
                trigger: trigger.to_string(),
                diagnostics: Vec::new(),
                policy_version: self.version(),
            },
            Ok(loaded) if !loaded.is_valid() => ReloadOutcome {
                outcome: "invalid",
                at: now,
                trigger: trigger.to_string(),
                diagnostics: diagnostics_of(&loaded),
                policy_version: self.version(),
            },
            Ok(loaded) => {
                let loaded = Arc::new(loaded);
                match self.compile(loaded.clone(), &state).await {
                    Ok(snapshot) => {
                        let version = snapshot.version().to_string();
                        let diagnostics = diagnostics_of(&loaded);
                        if let Ok(mut i) = self.info.write() {
                            *i = LoadedInfo {
                                loaded_at: Some(now),
                                files: file_hashes(&loaded),
                            };
                        }
                        if let Ok(mut l) = self.loaded.write() {
                            *l = loaded;
                        }
                        self.pdp.install(snapshot);
                        ReloadOutcome {
                            outcome: "ok",
                            at: now,
                            trigger: trigger.to_string(),
                            diagnostics,
                            policy_version: version,
                        }
                    }
                    Err(_) => ReloadOutcome {
                        outcome: "error",
                        at: now,
                        trigger: trigger.to_string(),
                        diagnostics: Vec::new(),
                        policy_version: self.version(),
                    },
                }
            }
        };
        drop(state);
        let mut r = Record::new(RecordKind::Reload);
        r.policy_version = Some(outcome.policy_version.clone());
        let errors = outcome
            .diagnostics
            .iter()
            .filter(|d| d.severity == "error")
            .count();
        r.detail = Some(format!(
            "reload ({}): {}; {errors} errors; first: {}",
            outcome.trigger,
            outcome.outcome,
            outcome
                .diagnostics
                .first()
                .map(|d| format!("{} {} {}", d.location, d.code, d.message))
                .unwrap_or_default()
        ));
        // A reload that cannot be recorded still happened; the log's health shows why.
        let _ = self.pdp.record_event(r).await;
        crate::metrics::reload(outcome.outcome);
        if outcome.outcome == "ok" {
            tracing::info!(trigger = %outcome.trigger, policy_version = %outcome.policy_version, "policy reloaded");
        } else {
            tracing::warn!(
                trigger = %outcome.trigger,
                outcome = outcome.outcome,
                first = %outcome.diagnostics.first().map(|d| format!("{} {}", d.location, d.code)).unwrap_or_default(),
                "policy reload refused; the last good version keeps serving"
            );
        }
        if let Ok(mut last) = self.last_reload.write() {
            *last = Some(outcome.clone());
        }
        outcome
    }

    fn version(&self) -> String {
        self.pdp
            .snapshot()
            .map(|s| s.version().to_string())
            .unwrap_or_default()
    }

    /// Compiles again for "now" (a time window opened or closed).
    pub async fn recompile(&self) -> Result<(), String> {
        let mut state = self.state.lock().await;
        state.prune(chrono::Utc::now());
        let snapshot = self.compile(self.loaded(), &state).await?;
        self.pdp.install(snapshot);
        Ok(())
    }

    fn check_ids(
        &self,
        kind: &str,
        ids: &[String],
        known: impl Fn(&str) -> bool,
    ) -> Result<(), ChangeError> {
        for id in ids {
            if !is_valid_id(id) || !known(id) {
                return Err(ChangeError::Invalid(format!(
                    "unknown {kind} `{}`",
                    crate::policy::diag::escape(id)
                )));
            }
        }
        Ok(())
    }

    /// Stores the new state, records the change, then swaps in the snapshot that uses it.
    async fn apply(
        &self,
        state: &mut StateFile,
        next: StateFile,
        who: &str,
        detail: String,
    ) -> Result<String, ChangeError> {
        let snapshot = self
            .compile(self.loaded(), &next)
            .await
            .map_err(ChangeError::Invalid)?;
        next.save(&self.state_path)
            .map_err(|_| ChangeError::Unavailable)?;
        let mut r = Record::new(RecordKind::Admin);
        r.subject = Some(SubjectRef {
            sub: who.to_string(),
            kind: String::from("operator"),
            ..SubjectRef::default()
        });
        r.policy_version = Some(snapshot.version().to_string());
        r.detail = Some(detail);
        if self.pdp.record_event(r).await.is_err() {
            // Not recorded: undo, so nothing changed.
            let _ = state.save(&self.state_path);
            return Err(ChangeError::Unavailable);
        }
        let version = snapshot.version().to_string();
        self.pdp.install(snapshot);
        *state = next;
        tracing::info!(by = %who, policy_version = %version, "runtime state changed");
        Ok(version)
    }

    pub async fn declare_emergency(&self, e: EmergencyRec) -> Result<String, ChangeError> {
        let mut state = self.state.lock().await;
        let now = chrono::Utc::now();
        state.prune(now);
        if !is_valid_id(&e.id) {
            return Err(ChangeError::Invalid(String::from(
                "`id` must be an id ([a-z0-9][a-z0-9._-]*)",
            )));
        }
        if state.emergencies.iter().any(|x| x.id == e.id) {
            return Err(ChangeError::Exists(e.id));
        }
        if e.until <= e.from
            || e.until - e.from
                > chrono::Duration::hours(crate::policy::validate::MAX_EMERGENCY_HOURS)
        {
            return Err(ChangeError::Invalid(String::from(
                "an emergency ends after it starts and lasts at most 72 hours",
            )));
        }
        if !e.all && e.sections.is_empty() == e.assets.is_empty() {
            return Err(ChangeError::Invalid(String::from(
                "an emergency covers `all`, or sections, or assets",
            )));
        }
        if e.responder_users.is_empty() && e.responder_sections.is_empty() {
            return Err(ChangeError::Invalid(String::from(
                "an emergency needs responders",
            )));
        }
        let loaded = self.loaded();
        let idx = crate::policy::index::Index::new(&loaded.bundle);
        self.check_ids("section", &e.sections, |s| idx.sections.contains_key(s))?;
        self.check_ids("section", &e.responder_sections, |s| {
            idx.sections.contains_key(s)
        })?;
        self.check_ids("asset", &e.assets, |a| idx.assets.contains_key(a))?;
        let detail = format!(
            "emergency {} declared: scope {}, responders users [{}] sections [{}], {} .. {}, reason: {}",
            e.id,
            if e.all {
                String::from("all")
            } else {
                format!(
                    "sections [{}] assets [{}]",
                    e.sections.join(", "),
                    e.assets.join(", ")
                )
            },
            e.responder_users.join(", "),
            e.responder_sections.join(", "),
            format_jst(e.from),
            format_jst(e.until),
            e.reason
        );
        let who = e.declared_by.clone();
        let mut next = state.clone();
        next.emergencies.push(e);
        self.apply(&mut state, next, &who, detail).await
    }

    pub async fn end_emergency(&self, id: &str, who: &str) -> Result<String, ChangeError> {
        self.remove(id, who, "emergency {id} ended", |st, id| {
            let before = st.emergencies.len();
            st.emergencies.retain(|x| x.id != id);
            st.emergencies.len() != before
        })
        .await
    }

    pub async fn declare_lockdown(&self, l: LockdownRec) -> Result<String, ChangeError> {
        let mut state = self.state.lock().await;
        state.prune(chrono::Utc::now());
        if !is_valid_id(&l.id) {
            return Err(ChangeError::Invalid(String::from(
                "`id` must be an id ([a-z0-9][a-z0-9._-]*)",
            )));
        }
        if state.lockdowns.iter().any(|x| x.id == l.id) {
            return Err(ChangeError::Exists(l.id));
        }
        if l.assets.is_empty() && l.sections.is_empty() && l.systems.is_empty() {
            return Err(ChangeError::Invalid(String::from(
                "a lockdown names assets, sections or systems",
            )));
        }
        if l.until.is_some_and(|u| u <= l.from) {
            return Err(ChangeError::Invalid(String::from(
                "a lockdown ends after it starts",
            )));
        }
        let loaded = self.loaded();
        let idx = crate::policy::index::Index::new(&loaded.bundle);
        self.check_ids("asset", &l.assets, |a| idx.assets.contains_key(a))?;
        self.check_ids("section", &l.sections, |s| idx.sections.contains_key(s))?;
        self.check_ids("system", &l.systems, |s| idx.systems.contains_key(s))?;
        if l.exempt
            .iter()
            .any(|u| !crate::policy::decode::is_valid_text(u))
        {
            return Err(ChangeError::Invalid(String::from(
                "`exempt` holds user ids",
            )));
        }
        let detail = format!(
            "lockdown {} declared: assets [{}] sections [{}] systems [{}], exempt [{}], from {}{}, reason: {}",
            l.id,
            l.assets.join(", "),
            l.sections.join(", "),
            l.systems.join(", "),
            l.exempt.join(", "),
            format_jst(l.from),
            l.until
                .map(|u| format!(" until {}", format_jst(u)))
                .unwrap_or_default(),
            l.reason
        );
        let who = l.declared_by.clone();
        let mut next = state.clone();
        next.lockdowns.push(l);
        self.apply(&mut state, next, &who, detail).await
    }

    pub async fn lift_lockdown(&self, id: &str, who: &str) -> Result<String, ChangeError> {
        self.remove(id, who, "lockdown {id} lifted", |st, id| {
            let before = st.lockdowns.len();
            st.lockdowns.retain(|x| x.id != id);
            st.lockdowns.len() != before
        })
        .await
    }

    /// Ends an entry of the state: `take` removes it and says whether it was there.
    async fn remove(
        &self,
        id: &str,
        who: &str,
        detail: &str,
        take: impl Fn(&mut StateFile, &str) -> bool,
    ) -> Result<String, ChangeError> {
        let mut state = self.state.lock().await;
        state.prune(chrono::Utc::now());
        let mut next = state.clone();
        if !take(&mut next, id) {
            return Err(ChangeError::NotFound(id.to_string()));
        }
        self.apply(&mut state, next, who, detail.replace("{id}", id))
            .await
    }
}
