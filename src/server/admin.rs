//! The Admin service: status, reload, emergencies and lockdowns, with the roles of
//! SPEC §6 and §9. Changes go through [`Living`], which stores, records and applies them.

use super::audit::operator;
use super::proto;
use super::proto::admin_server::Admin;
use crate::audit::writer::LogWriter;
use crate::auth::token::TokenVerifier;
use crate::living::{ChangeError, Living, ReloadOutcome};
use crate::state::{EmergencyRec, LockdownRec};
use crate::time::{format_jst, parse_policy_time};
use std::sync::Arc;
use tonic::{Request, Response, Status};

const ANY_OPERATOR: [&str; 3] = ["ciso", "security_admin", "auditor"];
const RELOADERS: [&str; 2] = ["security_admin", "ciso"];
const CISO: [&str; 1] = ["ciso"];

pub struct AdminService {
    living: Arc<Living>,
    tokens: Arc<TokenVerifier>,
    log: Option<LogWriter>,
    started: std::time::Instant,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService").finish_non_exhaustive()
    }
}

fn change_status(e: ChangeError) -> Status {
    match e {
        ChangeError::Invalid(m) => Status::invalid_argument(m),
        ChangeError::Exists(id) => Status::already_exists(format!("`{id}` is already in force")),
        ChangeError::NotFound(id) => Status::not_found(format!("no `{id}` is in force")),
        ChangeError::Unavailable => {
            Status::unavailable("the change could not be stored or recorded; nothing changed")
        }
    }
}

/// The answer to a state change, or its refusal.
fn changed(result: Result<String, ChangeError>) -> Result<Response<proto::ChangeResponse>, Status> {
    result
        .map(|policy_version| Response::new(proto::ChangeResponse { policy_version }))
        .map_err(change_status)
}

fn time_of(
    field: &str,
    text: &str,
    default: Option<crate::time::Instant>,
) -> Result<crate::time::Instant, Status> {
    if text.trim().is_empty() {
        return default.ok_or_else(|| Status::invalid_argument(format!("`{field}` is required")));
    }
    parse_policy_time(text)
        .ok_or_else(|| Status::invalid_argument(format!("`{field}` is not a date or time")))
}

fn outcome_to_proto(o: &ReloadOutcome) -> proto::ReloadOutcome {
    proto::ReloadOutcome {
        outcome: o.outcome.to_string(),
        at: format_jst(o.at),
        diagnostics: o
            .diagnostics
            .iter()
            .map(|d| proto::Diagnostic {
                severity: d.severity.to_string(),
                code: d.code.clone(),
                location: d.location.clone(),
                message: d.message.clone(),
            })
            .collect(),
        policy_version: o.policy_version.clone(),
    }
}

fn text_list(field: &str, v: Vec<String>) -> Result<Vec<String>, Status> {
    if v.len() > 1000
        || v.iter()
            .any(|s| s.len() > 256 || s.chars().any(char::is_control))
    {
        return Err(Status::invalid_argument(format!(
            "`{field}` holds at most 1000 printable values of at most 256 bytes"
        )));
    }
    Ok(v)
}

fn reason_of(text: String) -> Result<String, Status> {
    if text.trim().is_empty() || text.len() > 1024 || text.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "`reason` is required: printable text of at most 1024 bytes",
        ));
    }
    Ok(text)
}

impl AdminService {
    pub fn new(living: Arc<Living>, tokens: Arc<TokenVerifier>, log: Option<LogWriter>) -> Self {
        AdminService {
            living,
            tokens,
            log,
            started: std::time::Instant::now(),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_status(
        &self,
        req: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::GetStatusResponse>, Status> {
        operator(&self.tokens, self.living.pdp(), &req, &ANY_OPERATOR)?;
        let snap = self.living.pdp().snapshot();
        let loaded = self.living.loaded();
        let info = self.living.info();
        let state = self.living.state().await;
        let counts = snap.as_ref().map(|s| s.facts().counts).unwrap_or_default();
        let stats = self.log.as_ref().map(|l| &l.stats);
        let healthy = self.log.as_ref().is_none_or(|l| *l.healthy().borrow());
        Ok(Response::new(proto::GetStatusResponse {
            policy_version: snap
                .as_ref()
                .map(|s| s.version().to_string())
                .unwrap_or_default(),
            loaded_at: info.loaded_at.map(format_jst).unwrap_or_default(),
            files: info
                .files
                .into_iter()
                .map(|(path, sha256)| proto::SourceFile { path, sha256 })
                .collect(),
            last_reload: self.living.last_reload().as_ref().map(outcome_to_proto),
            sections: counts.sections as u64,
            systems: counts.systems as u64,
            assets: counts.assets as u64,
            grants: counts.grants as u64,
            grants_in_force: counts.effective_grants as u64,
            contracts: counts.contracts as u64,
            tests: loaded.bundle.tests.len() as u64,
            emergencies: state
                .emergencies
                .iter()
                .map(|e| proto::Emergency {
                    id: e.id.clone(),
                    all: e.all,
                    sections: e.sections.clone(),
                    assets: e.assets.clone(),
                    responder_users: e.responder_users.clone(),
                    responder_sections: e.responder_sections.clone(),
                    reason: e.reason.clone(),
                    from: format_jst(e.from),
                    until: format_jst(e.until),
                    declared_by: e.declared_by.clone(),
                })
                .collect(),
            lockdowns: state
                .lockdowns
                .iter()
                .map(|l| proto::Lockdown {
                    id: l.id.clone(),
                    assets: l.assets.clone(),
                    sections: l.sections.clone(),
                    systems: l.systems.clone(),
                    reason: l.reason.clone(),
                    exempt: l.exempt.clone(),
                    from: format_jst(l.from),
                    until: l.until.map(format_jst).unwrap_or_default(),
                    declared_by: l.declared_by.clone(),
                })
                .collect(),
            log_head_hash: stats
                .and_then(|s| s.head_hash.lock().ok().map(|h| hex::encode(*h)))
                .unwrap_or_default(),
            log_head_seq: stats
                .map_or(0, |s| s.head_seq.load(std::sync::atomic::Ordering::Relaxed)),
            log_last_checkpoint_seq: stats.map_or(0, |s| {
                s.last_checkpoint_seq
                    .load(std::sync::atomic::Ordering::Relaxed)
            }),
            log_healthy: healthy,
            uptime_seconds: self.started.elapsed().as_secs(),
            build_version: env!("CARGO_PKG_VERSION").to_string(),
            next_change: snap
                .as_ref()
                .and_then(|s| s.facts().next_change)
                .map(format_jst)
                .unwrap_or_default(),
        }))
    }

    async fn reload(
        &self,
        req: Request<proto::ReloadRequest>,
    ) -> Result<Response<proto::ReloadResponse>, Status> {
        let op = operator(&self.tokens, self.living.pdp(), &req, &RELOADERS)?;
        let outcome = self
            .living
            .reload_files(&format!("Reload RPC by {}", op.subject.sub))
            .await;
        Ok(Response::new(proto::ReloadResponse {
            outcome: Some(outcome_to_proto(&outcome)),
        }))
    }

    async fn declare_emergency(
        &self,
        req: Request<proto::DeclareEmergencyRequest>,
    ) -> Result<Response<proto::ChangeResponse>, Status> {
        let op = operator(&self.tokens, self.living.pdp(), &req, &CISO)?;
        let e = req
            .into_inner()
            .emergency
            .ok_or_else(|| Status::invalid_argument("`emergency` is required"))?;
        let now = chrono::Utc::now();
        let from = time_of("from", &e.from, Some(now))?;
        let rec = EmergencyRec {
            id: e.id,
            all: e.all,
            sections: text_list("sections", e.sections)?,
            assets: text_list("assets", e.assets)?,
            responder_users: text_list("responder_users", e.responder_users)?,
            responder_sections: text_list("responder_sections", e.responder_sections)?,
            reason: reason_of(e.reason)?,
            from,
            until: time_of("until", &e.until, None)?,
            declared_by: op.subject.sub,
        };
        changed(self.living.declare_emergency(rec).await)
    }

    async fn end_emergency(
        &self,
        req: Request<proto::EndRequest>,
    ) -> Result<Response<proto::ChangeResponse>, Status> {
        let op = operator(&self.tokens, self.living.pdp(), &req, &CISO)?;
        let id = req.into_inner().id;
        changed(self.living.end_emergency(&id, &op.subject.sub).await)
    }

    async fn declare_lockdown(
        &self,
        req: Request<proto::DeclareLockdownRequest>,
    ) -> Result<Response<proto::ChangeResponse>, Status> {
        let op = operator(&self.tokens, self.living.pdp(), &req, &RELOADERS)?;
        let l = req
            .into_inner()
            .lockdown
            .ok_or_else(|| Status::invalid_argument("`lockdown` is required"))?;
        let now = chrono::Utc::now();
        let rec = LockdownRec {
            id: l.id,
            assets: text_list("assets", l.assets)?,
            sections: text_list("sections", l.sections)?,
            systems: text_list("systems", l.systems)?,
            reason: reason_of(l.reason)?,
            exempt: text_list("exempt", l.exempt)?,
            from: time_of("from", &l.from, Some(now))?,
            until: if l.until.trim().is_empty() {
                None
            } else {
                Some(time_of("until", &l.until, None)?)
            },
            declared_by: op.subject.sub,
        };
        changed(self.living.declare_lockdown(rec).await)
    }

    async fn lift_lockdown(
        &self,
        req: Request<proto::EndRequest>,
    ) -> Result<Response<proto::ChangeResponse>, Status> {
        let op = operator(&self.tokens, self.living.pdp(), &req, &CISO)?;
        let id = req.into_inner().id;
        changed(self.living.lift_lockdown(&id, &op.subject.sub).await)
    }
}
