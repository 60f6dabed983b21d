//! The Audit service: operator tokens with the `auditor` or `ciso` role, queries over the
//! decision log (read on blocking threads, never on the request path of business systems),
//! and a record of every audit call committed before it is answered.

use super::proto;
use super::proto::audit_server::Audit;
use crate::audit::query::{Cursor, Filter, Row, SummaryBy};
use crate::audit::record::{Record, RecordKind, SubjectRef};
use crate::audit::store::Store;
use crate::auth::token::{TokenVerifier, VerifiedToken};
use crate::pdp::Pdp;
use base64::Engine as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Roles that may use the audit API.
pub const AUDIT_ROLES: [&str; 2] = ["auditor", "ciso"];
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
const EXPORT_CHUNK: usize = 1000;
const MAX_FILTER_TEXT: usize = 256;

pub struct AuditService {
    pdp: Arc<Pdp>,
    tokens: Arc<TokenVerifier>,
    log_path: PathBuf,
    public_key: Vec<u8>,
}

impl std::fmt::Debug for AuditService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditService")
            .field("log_path", &self.log_path)
            .finish_non_exhaustive()
    }
}

/// The bearer token of an operator call, verified, with one of `roles`. The client
/// certificate must not be a business system's: systems use the Access API only, so a
/// system that obtained an operator's token still cannot read the log or change state.
pub fn operator<T>(
    tokens: &TokenVerifier,
    pdp: &Pdp,
    req: &Request<T>,
    roles: &[&str],
) -> Result<VerifiedToken, Status> {
    let Some(leaf) = req.peer_certs().and_then(|c| c.first().cloned()) else {
        return Err(Status::unauthenticated("a client certificate is required"));
    };
    let identities = crate::auth::certificate_identities(leaf.as_ref());
    match pdp.system_for(&identities) {
        Ok(None) => {}
        Ok(Some(_)) => {
            crate::metrics::rejection("system_on_operator_api");
            return Err(Status::permission_denied(
                "business systems may only use the access API; operator calls need an operator certificate",
            ));
        }
        // Without a policy it is unknown who is a system: refuse.
        Err(_) => return Err(Status::unavailable("no policy is loaded")),
    }
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            Status::unauthenticated("an operator token is required (authorization: Bearer ...)")
        })?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| {
            Status::unauthenticated("an operator token is required (authorization: Bearer ...)")
        })?;
    let verified = tokens
        .verify(token)
        .map_err(|_| Status::unauthenticated("the operator token is missing or invalid"))?;
    if !verified.roles.iter().any(|r| roles.contains(&r.as_str())) {
        return Err(Status::permission_denied(format!(
            "this call needs one of the roles: {}",
            roles.join(", ")
        )));
    }
    Ok(verified)
}

fn text(field: &str, v: String) -> Result<Option<String>, Status> {
    if v.len() > MAX_FILTER_TEXT || v.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "`filter.{field}` must be printable text of at most 256 bytes"
        )));
    }
    Ok((!v.is_empty()).then_some(v))
}

fn filter_of(f: Option<proto::Filter>) -> Result<Filter, Status> {
    let f = f.unwrap_or_default();
    Ok(Filter {
        from_us: (f.from_us != 0).then_some(f.from_us),
        until_us: (f.until_us != 0).then_some(f.until_us),
        sub: text("sub", f.sub)?,
        section: text("section", f.section)?,
        system: text("system", f.system)?,
        asset: text("asset", f.asset)?,
        action: text("action", f.action)?,
        decision: text("decision", f.decision)?,
        reason: text("reason", f.reason)?,
        tier: text("tier", f.tier)?,
        policy_version: text("policy_version", f.policy_version)?,
        kind: text("kind", f.kind)?,
    })
}

fn row_to_proto(r: Row) -> proto::LogRecord {
    proto::LogRecord {
        seq: r.seq,
        id: r.id,
        time_us: r.time_us,
        kind: r.kind,
        canonical_json: String::from_utf8_lossy(&r.body).into_owned(),
        hash: hex::encode(r.hash),
    }
}

const CURSOR_PREFIX: &str = "sekimori-query-v2:";

fn encode_cursor(c: Cursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{CURSOR_PREFIX}{}:{}", c.time_us, c.seq))
}

fn decode_cursor(token: &str) -> Result<Option<Cursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Status::invalid_argument("`page_token` is not a token this service issued");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (time, seq) = text
        .strip_prefix(CURSOR_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(invalid)?;
    Ok(Some(Cursor {
        time_us: time.parse().map_err(|_| invalid())?,
        seq: seq.parse().map_err(|_| invalid())?,
    }))
}

fn unavailable() -> Status {
    Status::unavailable("the decision log cannot be read")
}

impl AuditService {
    pub fn new(
        pdp: Arc<Pdp>,
        tokens: Arc<TokenVerifier>,
        log_path: PathBuf,
        public_key: Vec<u8>,
    ) -> Self {
        AuditService {
            pdp,
            tokens,
            log_path,
            public_key,
        }
    }

    /// Authorizes the call and records it (who, which call, which filter) before answering.
    async fn admit<T>(&self, req: &Request<T>, call: &str, what: &str) -> Result<(), Status> {
        let op = operator(&self.tokens, &self.pdp, req, &AUDIT_ROLES)?;
        let mut r = Record::new(RecordKind::Audit);
        r.subject = Some(SubjectRef {
            sub: op.subject.sub.clone(),
            section: op.subject.section.clone(),
            kind: op.subject.kind.as_str().to_string(),
            contract: None,
        });
        r.detail = Some(format!("{call} {what}"));
        self.pdp
            .record_event(r)
            .await
            .map_err(|_| Status::unavailable("the audit call could not be recorded"))
    }

    async fn with_store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, crate::audit::store::StoreError> + Send + 'static,
    ) -> Result<R, Status> {
        let path = self.log_path.clone();
        tokio::task::spawn_blocking(move || {
            let store = Store::open_read_only(&path)?;
            f(&store)
        })
        .await
        .map_err(|_| unavailable())?
        .map_err(|_| unavailable())
    }
}

type ExportStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::ExportChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Audit for AuditService {
    async fn query_decisions(
        &self,
        req: Request<proto::QueryDecisionsRequest>,
    ) -> Result<Response<proto::QueryDecisionsResponse>, Status> {
        let filter = filter_of(req.get_ref().filter.clone())?;
        let what = serde_json::to_string(&filter).unwrap_or_default();
        self.admit(&req, "QueryDecisions", &what).await?;
        let r = req.into_inner();
        let limit = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            _ => return Err(Status::invalid_argument("`page_size` must be at most 1000")),
        };
        let cursor = decode_cursor(&r.page_token)?;
        let oldest_first = r.oldest_first;
        // One more than asked tells whether another page exists.
        let mut rows = self
            .with_store(move |s| s.query(&filter, cursor, oldest_first, limit + 1))
            .await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next = if more {
            rows.last()
                .map(|r| encode_cursor(r.cursor()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::QueryDecisionsResponse {
            records: rows.into_iter().map(row_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn get_decision(
        &self,
        req: Request<proto::GetDecisionRequest>,
    ) -> Result<Response<proto::LogRecord>, Status> {
        let id = req.get_ref().id.clone();
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
        {
            return Err(Status::invalid_argument("`id` must be a decision id"));
        }
        self.admit(&req, "GetDecision", &id).await?;
        let row = self.with_store(move |s| s.get(&id)).await?;
        row.map(|r| Response::new(row_to_proto(r)))
            .ok_or_else(|| Status::not_found("no record with that id"))
    }

    type ExportDecisionsStream = ExportStream;

    async fn export_decisions(
        &self,
        req: Request<proto::ExportDecisionsRequest>,
    ) -> Result<Response<Self::ExportDecisionsStream>, Status> {
        let filter = filter_of(req.get_ref().filter.clone())?;
        let what = serde_json::to_string(&filter).unwrap_or_default();
        self.admit(&req, "ExportDecisions", &what).await?;
        let oldest_first = req.get_ref().oldest_first;
        let path = self.log_path.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<proto::ExportChunk, Status>>(4);
        tokio::task::spawn_blocking(move || {
            let store = match Store::open_read_only(&path) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tx.blocking_send(Err(unavailable()));
                    return;
                }
            };
            let mut cursor = None;
            loop {
                match store.query(&filter, cursor, oldest_first, EXPORT_CHUNK) {
                    Ok(rows) if rows.is_empty() => break,
                    Ok(rows) => {
                        cursor = rows.last().map(Row::cursor);
                        let last = rows.len() < EXPORT_CHUNK;
                        let chunk = proto::ExportChunk {
                            records: rows.into_iter().map(row_to_proto).collect(),
                        };
                        // The client went away: stop reading.
                        if tx.blocking_send(Ok(chunk)).is_err() || last {
                            break;
                        }
                    }
                    Err(_) => {
                        let _ = tx.blocking_send(Err(unavailable()));
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn summarize(
        &self,
        req: Request<proto::SummarizeRequest>,
    ) -> Result<Response<proto::SummarizeResponse>, Status> {
        let filter = filter_of(req.get_ref().filter.clone())?;
        let by = SummaryBy::parse(&req.get_ref().by).ok_or_else(|| {
            Status::invalid_argument("`by` must be day, section, asset, reason or decision")
        })?;
        let what = format!(
            "by {} {}",
            req.get_ref().by,
            serde_json::to_string(&filter).unwrap_or_default()
        );
        self.admit(&req, "Summarize", &what).await?;
        let rows = self.with_store(move |s| s.summarize(&filter, by)).await?;
        Ok(Response::new(proto::SummarizeResponse {
            rows: rows
                .into_iter()
                .map(|r| proto::SummaryRow {
                    key: r.key,
                    allow: r.allow,
                    deny: r.deny,
                    total: r.total,
                })
                .collect(),
        }))
    }

    async fn verify_log(
        &self,
        req: Request<proto::VerifyLogRequest>,
    ) -> Result<Response<proto::VerifyLogResponse>, Status> {
        self.admit(&req, "VerifyLog", "").await?;
        let key = self.public_key.clone();
        let report = self
            .with_store(move |s| crate::audit::verify::verify(s, Some(&key), None, |_| {}))
            .await?;
        Ok(Response::new(proto::VerifyLogResponse {
            ok: report.ok(),
            records: report.records,
            last_seq: report.last_seq.unwrap_or(0),
            last_hash: report.last_hash.clone().unwrap_or_default(),
            checkpoints: report.checkpoints as u64,
            first_bad_seq: report.problem.as_ref().map_or(0, |p| p.seq),
            problem: report.problem.map(|p| p.what).unwrap_or_default(),
        }))
    }
}
