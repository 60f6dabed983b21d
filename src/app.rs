//! Composition root: build every part from the config, serve, shut down in order.
//!
//! Start-up order: load and validate the policy; check the token keys and TLS material
//! (each error names its file); bind; serve until a signal. A snapshot is compiled for
//! "now" and compiled again exactly when a grant, contract, emergency or lockdown starts
//! or ends, so decisions follow time without a restart.

use crate::audit::checkpoint::Signer;
use crate::audit::record::RecordKind;
use crate::audit::writer::{CheckpointPolicy, LogWriter, lifecycle};
use crate::auth::token::{JwksError, TokenVerifier};
use crate::config::Config;
use crate::engine::{CompileError, Snapshot};
use crate::pdp::{DecisionLog, Pdp};
use crate::policy::Loaded;
use crate::policy::model::RuntimeState;
use crate::server::{StartError, TlsMaterial};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("the policy in `{dir}` is invalid ({summary}); run `sekimori policy check {dir}`")]
    Policy { dir: String, summary: String },
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Jwks(#[from] JwksError),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("cannot read the checkpoint key `{path}`: {source}")]
    CheckpointKey {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::audit::checkpoint::KeyError),
    #[error("cannot open the decision log `{path}`: {source}")]
    Log {
        path: String,
        #[source]
        source: crate::audit::store::StoreError,
    },
    #[error("the decision log cannot commit; refusing to serve without it")]
    LogUnavailable,
}

/// Everything the service needs, built and checked, not yet listening.
pub struct App {
    pub config: Config,
    pub pdp: Arc<Pdp>,
    pub tokens: Arc<TokenVerifier>,
    pub tls: TlsMaterial,
    pub log: LogWriter,
    /// The public half of the checkpoint key (for VerifyLog).
    pub checkpoint_public_key: Vec<u8>,
    loaded: Arc<Loaded>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Loads the policy, keys and TLS material named by `config`.
    pub fn build(config: Config) -> Result<App, AppError> {
        let loaded = crate::policy::load(&config.policy_dir, chrono::Utc::now());
        if !loaded.is_valid() {
            return Err(AppError::Policy {
                dir: config.policy_dir.display().to_string(),
                summary: loaded.diagnostics.summary(),
            });
        }
        let tokens = Arc::new(TokenVerifier::from_config(&config.tokens)?);
        let tls = TlsMaterial::load(&config.tls)?;
        let key_path = config.log.checkpoint_key.display().to_string();
        let key_pem = std::fs::read_to_string(&config.log.checkpoint_key).map_err(|source| {
            AppError::CheckpointKey {
                path: key_path.clone(),
                source,
            }
        })?;
        let signer = Signer::from_pem(&key_pem, &key_path)?;
        let checkpoint_public_key = signer.public_key();
        let log_path = config.log.path.display().to_string();
        if let Some(dir) = config.log.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| AppError::Log {
                path: log_path.clone(),
                source: crate::audit::store::StoreError::Corrupt(e.to_string()),
            })?;
        }
        let policy = CheckpointPolicy {
            every_records: config.log.checkpoint_every,
            every: config.log.checkpoint_interval,
        };
        let log = LogWriter::start(&config.log.path, Some(signer), policy).map_err(|source| {
            AppError::Log {
                path: log_path,
                source,
            }
        })?;
        let pdp = Arc::new(Pdp::new(Arc::new(log.clone()) as Arc<dyn DecisionLog>));
        let snapshot = Snapshot::compile(&loaded, chrono::Utc::now(), &RuntimeState::default())?;
        pdp.install(snapshot);
        Ok(App {
            config,
            pdp,
            tokens,
            tls,
            log,
            checkpoint_public_key,
            loaded: Arc::new(loaded),
        })
    }

    /// Binds the configured address.
    pub async fn bind(&self) -> Result<tokio::net::TcpListener, StartError> {
        tokio::net::TcpListener::bind(self.config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: self.config.listen,
                source,
            })
    }

    /// Serves on `listener` until `shutdown`; recompiles the snapshot when time windows
    /// open or close.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let version = self
            .pdp
            .snapshot()
            .map(|s| s.version().to_string())
            .unwrap_or_default();
        let mut start = lifecycle(
            RecordKind::Start,
            &format!(
                "sekimori {} started; policy {version}",
                env!("CARGO_PKG_VERSION")
            ),
        );
        start.policy_version = Some(version.clone());
        self.pdp
            .record_event(start)
            .await
            .map_err(|_| AppError::LogUnavailable)?;
        let refresher = tokio::spawn(refresh_at_windows(self.pdp.clone(), self.loaded.clone()));
        let audit = crate::server::audit::AuditService::new(
            self.pdp.clone(),
            self.tokens.clone(),
            self.config.log.path.clone(),
            self.checkpoint_public_key.clone(),
        );
        let parts = crate::server::Parts {
            pdp: self.pdp.clone(),
            tokens: self.tokens.clone(),
            log_healthy: Some(self.log.healthy()),
            audit: Some(audit),
        };
        let result = crate::server::serve(&self.config, &self.tls, parts, listener, shutdown).await;
        refresher.abort();
        let mut stop = lifecycle(RecordKind::Stop, "sekimori stopped");
        stop.policy_version = Some(version);
        // A stop that cannot be recorded shows in verification as a start without a stop.
        let _ = self.pdp.record_event(stop).await;
        Ok(result?)
    }
}

/// Longest wait between recompilations even without a window change (guards against a
/// wall clock that jumped).
const MAX_SNAPSHOT_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

async fn refresh_at_windows(pdp: Arc<Pdp>, loaded: Arc<Loaded>) {
    loop {
        let next = pdp.snapshot().and_then(|s| s.facts().next_change);
        let wait = next
            .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
            .map_or(MAX_SNAPSHOT_AGE, |d| d.min(MAX_SNAPSHOT_AGE));
        tokio::time::sleep(wait + std::time::Duration::from_millis(1)).await;
        let loaded = loaded.clone();
        let compiled = tokio::task::spawn_blocking(move || {
            Snapshot::compile(&loaded, chrono::Utc::now(), &RuntimeState::default())
        })
        .await;
        match compiled {
            Ok(Ok(snapshot)) => pdp.install(snapshot),
            // Keep serving the last good snapshot; try again after the next wait.
            Ok(Err(e)) => eprintln!(
                "sekimori: recompiling the policy failed, keeping the last good version: {e}"
            ),
            Err(_) => {
                eprintln!("sekimori: recompiling the policy failed, keeping the last good version")
            }
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
