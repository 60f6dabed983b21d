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
use crate::engine::CompileError;
use crate::living::Living;
use crate::pdp::{DecisionLog, Pdp};
use crate::server::{StartError, TlsMaterial};
use crate::state::StateFile;
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
    #[error(
        "the decision log `{path}` cannot commit (read-only or full filesystem? see the log lines above); refusing to serve without it"
    )]
    LogUnavailable { path: String },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("cannot serve metrics on {addr}: {message}")]
    Metrics { addr: String, message: String },
    #[error("cannot watch the policy directory `{dir}`: {message}")]
    Watch { dir: String, message: String },
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
    /// Files, runtime state and time → the snapshot in force.
    pub living: Arc<Living>,
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
        let pdp = Arc::new(
            Pdp::new(Arc::new(log.clone()) as Arc<dyn DecisionLog>)
                .with_verdict_cache(config.limits.verdict_cache),
        );
        let state_path = config.data_dir.join("state.json");
        let mut state = StateFile::load(&state_path)?;
        state.prune(chrono::Utc::now());
        let living = Arc::new(Living::start(
            config.policy_dir.clone(),
            state_path,
            pdp.clone(),
            loaded,
            state,
        )?);
        Ok(App {
            config,
            pdp,
            tokens,
            tls,
            log,
            checkpoint_public_key,
            living,
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
        if let Some(addr) = self.config.metrics {
            crate::metrics::install(addr).map_err(|message| AppError::Metrics {
                addr: addr.to_string(),
                message,
            })?;
        }
        let version = self
            .pdp
            .snapshot()
            .map(|s| s.version().to_string())
            .unwrap_or_default();
        tracing::info!(policy_version = %version, listen = %self.config.listen, log = %self.config.log.path.display(), "sekimori starting");
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
            .map_err(|_| AppError::LogUnavailable {
                path: self.log.path().display().to_string(),
            })?;
        let refresher = tokio::spawn(refresh_at_windows(self.living.clone()));
        let watcher = watch_policy_dir(self.living.clone(), &self.config.policy_dir)?;
        let hangup = tokio::spawn(reload_on_sighup(self.living.clone()));
        let audit = crate::server::audit::AuditService::new(
            self.pdp.clone(),
            self.tokens.clone(),
            self.config.log.path.clone(),
            self.checkpoint_public_key.clone(),
        );
        let admin = crate::server::admin::AdminService::new(
            self.living.clone(),
            self.tokens.clone(),
            Some(self.log.clone()),
        );
        let parts = crate::server::Parts {
            pdp: self.pdp.clone(),
            tokens: self.tokens.clone(),
            log_healthy: Some(self.log.healthy()),
            audit: Some(audit),
            admin: Some(admin),
        };
        let result = crate::server::serve(&self.config, &self.tls, parts, listener, shutdown).await;
        refresher.abort();
        hangup.abort();
        drop(watcher);
        let mut stop = lifecycle(RecordKind::Stop, "sekimori stopped");
        stop.policy_version = Some(version);
        // A stop that cannot be recorded shows in verification as a start without a stop.
        let _ = self.pdp.record_event(stop).await;
        Ok(result?)
    }
}

/// Longest wait between recompilations even without a window change.
const MAX_SNAPSHOT_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// How often the wall clock is compared with the snapshot's validity, so that a clock that
/// steps (NTP correction, a resumed virtual machine) is noticed within this long. Timers run
/// on the monotonic clock and would not notice a step by themselves.
const CLOCK_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether a snapshot compiled for `facts.at` no longer describes `now`: a grant, contract,
/// emergency or lockdown started or ended since (`now` reached `next_change`), or the clock
/// went back before the time it was compiled for (something that had started has not yet).
pub fn snapshot_is_stale(facts: &crate::engine::facts::Facts, now: crate::time::Instant) -> bool {
    facts.next_change.is_some_and(|t| now >= t) || facts.at.is_some_and(|at| now < at)
}

async fn refresh_at_windows(living: Arc<Living>) {
    let mut compiled = tokio::time::Instant::now();
    loop {
        // Sleep until the next change if it is sooner than the next clock check.
        let next = living.pdp().snapshot().and_then(|s| s.facts().next_change);
        let wait = next
            .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
            .map_or(CLOCK_CHECK, |d| d.min(CLOCK_CHECK));
        tokio::time::sleep(wait + std::time::Duration::from_millis(1)).await;
        let now = chrono::Utc::now();
        let stale = living
            .pdp()
            .snapshot()
            .is_some_and(|s| snapshot_is_stale(s.facts(), now));
        if !stale && compiled.elapsed() < MAX_SNAPSHOT_AGE {
            continue;
        }
        compiled = tokio::time::Instant::now();
        // On failure the last good snapshot keeps serving; the next check tries again.
        if let Err(e) = living.recompile().await {
            tracing::error!(error = %e, "recompiling the policy failed; the last good version keeps serving");
        }
    }
}

/// How long file events are gathered before one reload (editors, `git checkout`).
const RELOAD_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(300);

type Watcher = notify_debouncer_full::Debouncer<
    notify_debouncer_full::notify::RecommendedWatcher,
    notify_debouncer_full::RecommendedCache,
>;

/// The identity of a directory (device, inode): a directory deleted and created again under
/// the same name is another directory, and a watch on the old one sees nothing.
fn dir_identity(dir: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Watches the policy directory; any change (rename-saves, checkouts, ConfigMap symlink
/// swaps) triggers one debounced reload of the whole bundle. Its parent is watched too, so
/// that a directory deleted and restored (or replaced with `mv`) is watched again.
fn watch_policy_dir(
    living: Arc<Living>,
    dir: &std::path::Path,
) -> Result<Arc<std::sync::Mutex<Watcher>>, AppError> {
    let watch_error = |e: notify_debouncer_full::notify::Error| AppError::Watch {
        dir: dir.display().to_string(),
        message: e.to_string(),
    };
    // Absolute (without resolving links: ConfigMap mounts swap links), so that the
    // parent of `policies` is the working directory rather than an empty path.
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watched = dir.clone();
    let mut debouncer = notify_debouncer_full::new_debouncer(
        RELOAD_DEBOUNCE,
        None,
        move |result: notify_debouncer_full::DebounceEventResult| {
            // Only changes count: reading the files (access events) must not reload; in
            // the parent, only the policy directory itself.
            let relevant = |e: &notify_debouncer_full::DebouncedEvent| {
                is_change(&e.event.kind) && e.event.paths.iter().any(|p| p.starts_with(&watched))
            };
            if result.is_ok_and(|events| events.iter().any(relevant)) {
                let _ = tx.send(());
            }
        },
    )
    .map_err(watch_error)?;
    debouncer
        .watch(
            &dir,
            notify_debouncer_full::notify::RecursiveMode::Recursive,
        )
        .map_err(watch_error)?;
    if let Some(parent) = dir.parent() {
        // Best effort: without it, a re-created directory needs SIGHUP or Reload.
        if let Err(e) = debouncer.watch(
            parent,
            notify_debouncer_full::notify::RecursiveMode::NonRecursive,
        ) {
            tracing::warn!(error = %e, "cannot watch the policy directory's parent");
        }
    }
    let debouncer = Arc::new(std::sync::Mutex::new(debouncer));
    let rewatch = Arc::clone(&debouncer);
    let mut identity = dir_identity(&dir);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Coalesce what arrived meanwhile into this one reload.
            while rx.try_recv().is_ok() {}
            let now = dir_identity(&dir);
            if now.is_some() && now != identity {
                if let Ok(mut w) = rewatch.lock() {
                    let _ = w.unwatch(&dir);
                    match w.watch(
                        &dir,
                        notify_debouncer_full::notify::RecursiveMode::Recursive,
                    ) {
                        Ok(()) => {
                            identity = now;
                            tracing::info!(
                                "the policy directory was re-created; watching it again"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot watch the re-created policy directory")
                        }
                    }
                }
            }
            living.reload_files("file change").await;
        }
    });
    Ok(debouncer)
}

fn is_change(kind: &notify_debouncer_full::notify::EventKind) -> bool {
    use notify_debouncer_full::notify::EventKind;
    use notify_debouncer_full::notify::event::{MetadataKind, ModifyKind};
    match kind {
        EventKind::Access(_) | EventKind::Other => false,
        EventKind::Modify(ModifyKind::Metadata(MetadataKind::AccessTime)) => false,
        EventKind::Any | EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
    }
}

async fn reload_on_sighup(living: Arc<Living>) {
    #[cfg(unix)]
    if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        while hup.recv().await.is_some() {
            living.reload_files("SIGHUP").await;
        }
    }
    std::future::pending::<()>().await;
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

#[cfg(test)]
mod tests {
    use super::snapshot_is_stale;
    use crate::engine::facts::Facts;
    use crate::time::parse_policy_time;

    #[test]
    fn a_clock_step_either_way_makes_the_snapshot_stale() {
        let t = |s: &str| parse_policy_time(s).unwrap();
        let facts = Facts {
            at: Some(t("2026-06-01T12:00:00+09:00")),
            next_change: Some(t("2026-06-01T17:00:00+09:00")),
            ..Facts::default()
        };
        // Time passing normally.
        assert!(!snapshot_is_stale(&facts, t("2026-06-01T12:00:01+09:00")));
        assert!(!snapshot_is_stale(&facts, t("2026-06-01T16:59:59+09:00")));
        // The window boundary, reached normally or by a step forward of hours.
        assert!(snapshot_is_stale(&facts, t("2026-06-01T17:00:00+09:00")));
        assert!(snapshot_is_stale(&facts, t("2026-06-02T09:00:00+09:00")));
        // A step back before the time the snapshot was compiled for.
        assert!(snapshot_is_stale(&facts, t("2026-06-01T11:59:59+09:00")));
        // Nothing ever changes: only a step back matters.
        let still = Facts {
            at: facts.at,
            ..Facts::default()
        };
        assert!(!snapshot_is_stale(&still, t("2030-01-01T00:00:00+09:00")));
        assert!(snapshot_is_stale(&still, t("2020-01-01T00:00:00+09:00")));
    }
}
