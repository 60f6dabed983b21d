//! The gRPC edge: TLS with required client certificates, the Access service, health and
//! reflection, graceful shutdown. Errors become `tonic::Status` in one place
//! ([`status_of`]); messages to clients are short and never carry internals.

pub mod admin;
pub mod audit;
pub mod proto;

use crate::auth::token::TokenVerifier;
use crate::config::{Config, Limits};
use crate::engine::decide::{Decision, Obligation};
use crate::engine::{Env, Subject};
use crate::pdp::{Answer, Pdp, PdpError, Question};
use crate::policy::decode::is_valid_id;
use crate::policy::model::Action;
use base64::Engine as _;
use proto::access_server::{Access, AccessServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tonic::codegen::http;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

/// Why the service could not start. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read {what} `{path}`: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} `{path}` is invalid: {why}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("the server failed: {0}")]
    Serve(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(path).map_err(|source| StartError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// TLS material, checked: the certificate chain and key parse, the CA parses.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub client_ca_pem: Vec<u8>,
}

impl TlsMaterial {
    pub fn load(files: &crate::config::TlsFiles) -> Result<Self, StartError> {
        let cert_pem = read("server certificate", &files.cert)?;
        let key_pem = read("server key", &files.key)?;
        let client_ca_pem = read("client CA", &files.client_ca)?;
        let certs = |what, path: &Path, pem: &[u8]| -> Result<(), StartError> {
            let parsed: Result<Vec<CertificateDer>, _> =
                CertificateDer::pem_slice_iter(pem).collect();
            match parsed {
                Ok(v) if !v.is_empty() => Ok(()),
                Ok(_) => Err(StartError::Invalid {
                    what,
                    path: path.to_path_buf(),
                    why: String::from("no PEM CERTIFICATE block"),
                }),
                Err(e) => Err(StartError::Invalid {
                    what,
                    path: path.to_path_buf(),
                    why: format!("not PEM: {e}"),
                }),
            }
        };
        certs("server certificate", &files.cert, &cert_pem)?;
        certs("client CA", &files.client_ca, &client_ca_pem)?;
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| StartError::Invalid {
            what: "server key",
            path: files.key.clone(),
            why: format!("no private key: {e}"),
        })?;
        Ok(TlsMaterial {
            cert_pem,
            key_pem,
            client_ca_pem,
        })
    }

    /// The rustls server configuration: TLS 1.2 and 1.3, HTTP/2 only, and a client
    /// certificate chaining to the client CA required on every connection.
    pub fn rustls_config(&self) -> Result<Arc<rustls::ServerConfig>, StartError> {
        let tls_err = |e: String| StartError::Tls(e);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| tls_err(e.to_string()))?;
        let key =
            PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| tls_err(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(&self.client_ca_pem) {
            roots
                .add(ca.map_err(|e| tls_err(e.to_string()))?)
                .map_err(|e| tls_err(e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| tls_err(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| tls_err(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Longest a TLS handshake may take: a stalled client holds no slot beyond it.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a TLS handshake failed, as a metric label.
fn handshake_cause(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error as TlsError};
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    {
        Some(TlsError::NoCertificatesPresented) => "tls_no_client_certificate",
        Some(TlsError::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => "tls_unknown_ca",
        Some(TlsError::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        )) => "tls_certificate_expired",
        Some(TlsError::InvalidCertificate(_)) => "tls_invalid_certificate",
        Some(TlsError::PeerIncompatible(_)) => "tls_protocol_version",
        Some(
            TlsError::InvalidMessage(_)
            | TlsError::InappropriateMessage { .. }
            | TlsError::InappropriateHandshakeMessage { .. },
        ) => "tls_not_tls",
        Some(_) => "tls_other",
        None => "tls_connection",
    }
}

/// Accepts TCP connections and performs the TLS handshake, with a timeout; failures are
/// counted by cause. Completed connections go to the gRPC server.
fn tls_incoming(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> (
    tokio_stream::wrappers::ReceiverStream<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    >,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(_) => {
                    // Out of file descriptors and the like: back off briefly.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        let cause = handshake_cause(&e);
                        crate::metrics::rejection(cause);
                        tracing::info!(%peer, cause, "refused: TLS handshake failed");
                    }
                    Err(_) => {
                        crate::metrics::rejection("tls_handshake_timeout");
                        tracing::info!(%peer, "refused: TLS handshake timed out");
                    }
                }
            });
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), task)
}

/// Records how long an access call took, whatever its outcome.
struct CallTimer {
    call: &'static str,
    started: std::time::Instant,
}

impl CallTimer {
    fn start(call: &'static str) -> Self {
        CallTimer {
            call,
            started: std::time::Instant::now(),
        }
    }
}

impl Drop for CallTimer {
    fn drop(&mut self) {
        crate::metrics::check_latency(self.call, self.started.elapsed());
    }
}

/// The one mapping from failures to gRPC status.
pub fn status_of(e: &PdpError) -> Status {
    match e {
        PdpError::NoPolicy => {
            Status::unavailable("no valid policy is loaded; access must be refused")
        }
        PdpError::LogUnavailable => {
            Status::unavailable("the decision could not be recorded; access must be refused")
        }
    }
}

/// The Access service.
pub struct AccessService {
    pdp: Arc<Pdp>,
    tokens: Arc<TokenVerifier>,
    limits: Limits,
    inflight: Arc<Semaphore>,
    identities: crate::auth::IdentityCache,
}

impl std::fmt::Debug for AccessService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessService").finish_non_exhaustive()
    }
}

const MAX_ASSET_BYTES: usize = 128;
const MAX_PURPOSE_BYTES: usize = 256;
const MAX_REASON_BYTES: usize = 1024;
const MAX_REQUEST_ID_BYTES: usize = 128;
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

fn bad(field: &str, why: &str) -> Status {
    Status::invalid_argument(format!("`{field}` {why}"))
}

fn printable(text: &str) -> bool {
    !text
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
}

fn action_of(text: &str) -> Result<Action, Status> {
    Action::parse(text).ok_or_else(|| {
        bad(
            "action",
            "must be one of read, create, update, delete, print, copy, export, transmit",
        )
    })
}

fn asset_of(text: &str) -> Result<String, Status> {
    if text.is_empty() || text.len() > MAX_ASSET_BYTES || !is_valid_id(text) {
        return Err(bad(
            "asset",
            "must be an asset id ([a-z0-9][a-z0-9._-]*, at most 128 bytes)",
        ));
    }
    Ok(text.to_string())
}

fn env_of(env: Option<proto::Environment>) -> Result<Env, Status> {
    let env = env.unwrap_or_default();
    if env.purpose.len() > MAX_PURPOSE_BYTES || !printable(&env.purpose) {
        return Err(bad(
            "env.purpose",
            "must be printable text of at most 256 bytes",
        ));
    }
    if env.break_glass_reason.len() > MAX_REASON_BYTES || !printable(&env.break_glass_reason) {
        return Err(bad(
            "env.break_glass_reason",
            "must be printable text of at most 1024 bytes",
        ));
    }
    let non_blank = |s: String| (!s.trim().is_empty()).then_some(s);
    Ok(Env {
        device_issued: env.device_issued,
        purpose: non_blank(env.purpose),
        break_glass_reason: non_blank(env.break_glass_reason),
    })
}

fn request_id_of(text: String) -> Result<Option<String>, Status> {
    if text.len() > MAX_REQUEST_ID_BYTES || !text.chars().all(|c| c.is_ascii_graphic()) {
        return Err(bad(
            "request_id",
            "must be printable ASCII of at most 128 bytes",
        ));
    }
    Ok((!text.is_empty()).then_some(text))
}

/// The one conversion of a check on the wire into a question for the decision point:
/// every field bounded and validated, or `INVALID_ARGUMENT` naming the field.
pub fn question_of(
    asset: &str,
    action: &str,
    env: Option<proto::Environment>,
    request_id: String,
) -> Result<Question, Status> {
    Ok(Question {
        asset: asset_of(asset)?,
        action: action_of(action)?,
        env: env_of(env)?,
        request_id: request_id_of(request_id)?,
    })
}

fn decision_to_proto(a: Answer) -> proto::Decision {
    let Answer {
        decision_id,
        decision,
    } = a;
    let Decision {
        allow,
        reason,
        message_ja,
        message_en,
        rule,
        obligations,
        label,
        policy_version,
        ..
    } = decision;
    proto::Decision {
        allow,
        reason: reason.as_str().to_string(),
        message_ja: message_ja.to_string(),
        message_en: message_en.to_string(),
        rule: rule.map(|r| proto::Rule {
            kind: r.kind.to_string(),
            id: r.id.to_string(),
            source: r.source.map(|l| l.to_string()).unwrap_or_default(),
        }),
        obligations: obligations.into_iter().map(obligation_to_proto).collect(),
        label: label.map(String::from).unwrap_or_default(),
        policy_version: policy_version.to_string(),
        decision_id,
    }
}

fn obligation_to_proto(o: Obligation) -> proto::Obligation {
    let kind = o.name().to_string();
    let text = match o {
        Obligation::Label { text } => text.into(),
        _ => String::new(),
    };
    proto::Obligation { kind, text }
}

impl AccessService {
    pub fn new(pdp: Arc<Pdp>, tokens: Arc<TokenVerifier>, limits: Limits) -> Self {
        let inflight = Arc::new(Semaphore::new(limits.max_concurrent_requests));
        AccessService {
            pdp,
            tokens,
            limits,
            inflight,
            identities: crate::auth::IdentityCache::default(),
        }
    }

    /// The registered system named by the peer certificate; a refusal is recorded.
    async fn caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let missing = || Status::unauthenticated("a client certificate is required");
        let certs = req.peer_certs().ok_or_else(missing)?;
        let leaf = certs.first().ok_or_else(missing)?;
        let identities = self.identities.identities(leaf.as_ref());
        match self.pdp.system_for(&identities) {
            Ok(Some(system)) => Ok(system),
            Ok(None) => {
                let shown: String = identities
                    .first()
                    .map_or("(no URI or DNS SAN)", String::as_str)
                    .chars()
                    .take(256)
                    .collect();
                crate::metrics::rejection("unregistered_certificate");
                tracing::warn!(identity = %crate::policy::diag::escape(&shown), "refused: unregistered client certificate identity");
                self.pdp
                    .record_rejection(
                        None,
                        None,
                        &format!("unregistered certificate identity: {shown}"),
                    )
                    .await;
                Err(Status::permission_denied(
                    "the client certificate names no registered system",
                ))
            }
            Err(e) => Err(status_of(&e)),
        }
    }

    /// The verified subject; a refusal is recorded with its cause.
    async fn subject(&self, system: &str, token: &str) -> Result<Subject, Status> {
        match self.tokens.verify(token) {
            Ok(v) => Ok(v.subject),
            Err(e) => {
                crate::metrics::rejection(e.cause());
                tracing::info!(system, cause = e.cause(), "refused: bad subject token");
                self.pdp
                    .record_rejection(
                        Some(system),
                        None,
                        &format!("bad subject token: {}", e.cause()),
                    )
                    .await;
                Err(Status::unauthenticated(
                    "the subject token is missing or invalid",
                ))
            }
        }
    }

    fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.inflight
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("the server is busy; retry later"))
    }
}

#[tonic::async_trait]
impl Access for AccessService {
    async fn check(
        &self,
        req: Request<proto::CheckRequest>,
    ) -> Result<Response<proto::CheckResponse>, Status> {
        let _permit = self.permit()?;
        let _timer = CallTimer::start("check");
        let system = self.caller(&req).await?;
        let r = req.into_inner();
        let subject = self.subject(&system, &r.subject_token).await?;
        let q = question_of(&r.asset, &r.action, r.env, r.request_id)?;
        let mut answers = self
            .pdp
            .check(&system, &subject, std::slice::from_ref(&q))
            .await
            .map_err(|e| status_of(&e))?;
        let answer = answers
            .pop()
            .ok_or_else(|| Status::internal("no decision"))?;
        Ok(Response::new(proto::CheckResponse {
            decision: Some(decision_to_proto(answer)),
        }))
    }

    async fn batch_check(
        &self,
        req: Request<proto::BatchCheckRequest>,
    ) -> Result<Response<proto::BatchCheckResponse>, Status> {
        let _permit = self.permit()?;
        let _timer = CallTimer::start("batch_check");
        let system = self.caller(&req).await?;
        let r = req.into_inner();
        let subject = self.subject(&system, &r.subject_token).await?;
        if r.checks.is_empty() || r.checks.len() > self.limits.max_batch {
            return Err(bad(
                "checks",
                &format!("must hold 1 to {} checks", self.limits.max_batch),
            ));
        }
        let mut questions = Vec::with_capacity(r.checks.len());
        for c in r.checks {
            questions.push(question_of(&c.asset, &c.action, c.env, c.request_id)?);
        }
        let answers = self
            .pdp
            .check(&system, &subject, &questions)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(proto::BatchCheckResponse {
            decisions: answers.into_iter().map(decision_to_proto).collect(),
        }))
    }

    async fn list_accessible(
        &self,
        req: Request<proto::ListAccessibleRequest>,
    ) -> Result<Response<proto::ListAccessibleResponse>, Status> {
        let _permit = self.permit()?;
        let _timer = CallTimer::start("list_accessible");
        let system = self.caller(&req).await?;
        let r = req.into_inner();
        let subject = self.subject(&system, &r.subject_token).await?;
        let action = action_of(&r.action)?;
        let env = env_of(r.env)?;
        let page_size = match r.page_size as usize {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            _ => return Err(bad("page_size", "must be at most 1000")),
        };
        let start = decode_page_token(&r.page_token)?;
        let page = self
            .pdp
            .list_accessible(&system, &subject, action, &env, start, page_size)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(proto::ListAccessibleResponse {
            assets: page
                .assets
                .into_iter()
                .map(|(asset, name, answer)| proto::AccessibleAsset {
                    asset,
                    name: name.unwrap_or_default(),
                    label: answer
                        .decision
                        .label
                        .as_deref()
                        .unwrap_or_default()
                        .to_string(),
                    reason: answer.decision.reason.as_str().to_string(),
                    obligations: answer
                        .decision
                        .obligations
                        .into_iter()
                        .map(obligation_to_proto)
                        .collect(),
                })
                .collect(),
            next_page_token: page.next.map(encode_page_token).unwrap_or_default(),
            policy_version: page.policy_version.to_string(),
        }))
    }
}

const PAGE_TOKEN_PREFIX: &str = "sekimori-page-v1:";

fn encode_page_token(pos: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{pos}"))
}

fn decode_page_token(token: &str) -> Result<usize, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    let invalid = || bad("page_token", "is not a token this service issued");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    text.strip_prefix(PAGE_TOKEN_PREFIX)
        .and_then(|n| n.parse().ok())
        .ok_or_else(invalid)
}

/// The parts the services are built from.
#[derive(Debug)]
pub struct Parts {
    pub pdp: Arc<Pdp>,
    pub tokens: Arc<TokenVerifier>,
    /// Whether the decision log can commit; health follows it.
    pub log_healthy: Option<tokio::sync::watch::Receiver<bool>>,
    /// The audit service, when the decision log is durable.
    pub audit: Option<audit::AuditService>,
    pub admin: Option<admin::AdminService>,
}

/// Builds the server and serves on `listener` until `shutdown` resolves; then reports
/// NOT_SERVING, stops accepting and lets requests in flight finish within the grace period.
pub async fn serve(
    cfg: &Config,
    tls: &TlsMaterial,
    parts: Parts,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let Parts {
        pdp,
        tokens,
        log_healthy,
        audit,
        admin,
    } = parts;
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Serve(e.to_string()))?;
    let service = AccessService::new(pdp.clone(), tokens, cfg.limits.clone());
    let access = AccessServer::new(service)
        .max_decoding_message_size(cfg.limits.max_message_bytes)
        .max_encoding_message_size(cfg.limits.max_message_bytes.max(16 * 1024 * 1024));
    if pdp.snapshot().is_some() {
        health.set_serving::<AccessServer<AccessService>>().await;
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
    } else {
        health
            .set_not_serving::<AccessServer<AccessService>>()
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
    }
    // The service is SERVING only while the log can commit; it recovers by itself.
    if let Some(mut healthy) = log_healthy {
        let reporter = health.clone();
        tokio::spawn(async move {
            while healthy.changed().await.is_ok() {
                let status = if *healthy.borrow() {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter
                    .set_service_status("sekimori.v1.Access", status)
                    .await;
                reporter.set_service_status("", status).await;
            }
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let draining = health.clone();
    let signal = async move {
        shutdown.await;
        draining
            .set_not_serving::<AccessServer<AccessService>>()
            .await;
        draining
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let _ = stop_tx.send(());
    };
    let (incoming, acceptor) = tls_incoming(listener, tls.rustls_config()?);
    let server = Server::builder()
        .layer(tower::util::MapResponseLayer::new(
            undecodable_is_invalid_argument::<tonic::body::Body>,
        ))
        .timeout(cfg.limits.request_timeout)
        .concurrency_limit_per_connection(256)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(access)
        .add_optional_service(audit.map(proto::audit_server::AuditServer::new))
        .add_optional_service(admin.map(proto::admin_server::AdminServer::new))
        .serve_with_incoming_shutdown(incoming, signal);
    let grace = cfg.shutdown_grace;
    tokio::pin!(server);
    let outcome = tokio::select! {
        result = &mut server => result.map_err(|e| StartError::Serve(e.to_string())),
        _ = async { let _ = stop_rx.await; tokio::time::sleep(grace).await; } => {
            // The grace period is over: connections still open are dropped.
            Ok(())
        }
    };
    acceptor.abort();
    outcome
}

/// tonic answers a request it cannot decode (a string field that is not UTF-8, a truncated
/// message) with `INTERNAL` and a message naming the proto field. A malformed request is
/// the caller's fault and the message is ours to choose: `INVALID_ARGUMENT`, plain text.
/// Such errors are always trailers-only responses, so the status is in the headers.
fn undecodable_is_invalid_argument<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let undecodable = headers.get("grpc-status").is_some_and(|s| s == "13")
        && headers
            .get("grpc-message")
            .is_some_and(|m| m.as_bytes().starts_with(b"failed%20to%20decode"));
    if undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        headers.insert(
            "grpc-message",
            http::HeaderValue::from_static("the%20request%20is%20not%20a%20valid%20message"),
        );
    }
    response
}
