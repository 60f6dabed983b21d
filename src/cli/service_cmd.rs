//! `sekimori serve`, `sekimori check`, `sekimori dev init|token`.

use super::{EXIT_DENIED, EXIT_OK};
use crate::app::{App, shutdown_signal};
use crate::config::{Config, parse_duration};
use crate::devpki::{self, DevPaths, TokenClaims};
use crate::policy::diag::escape;
use crate::server::proto;
use anyhow::{Context, anyhow, bail};
use clap::Args;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Configuration file (TOML). Required unless `--dev`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Development mode: the sample policies, generated CA, certificates and token key.
    #[arg(long)]
    dev: bool,
    /// Address to listen on (overrides the config).
    #[arg(long)]
    listen: Option<String>,
    /// Data directory (dev mode; default `data`).
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Policy directory (dev mode; default `policies`).
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// Where to serve Prometheus metrics (dev mode default 127.0.0.1:9464), or `off`.
    #[arg(long)]
    metrics: Option<String>,
    /// Operational log format on standard error (levels: RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald, files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    // A second initialization is harmless: the first one stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[derive(Args, Debug)]
pub struct DevInitArgs {
    #[arg(long, default_value = "data")]
    data: PathBuf,
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// The subject's user id.
    #[arg(long)]
    sub: String,
    #[arg(long)]
    section: Option<String>,
    /// Authentication methods (RFC 8176), comma separated, e.g. `pwd,fpt`.
    #[arg(long, value_delimiter = ',')]
    amr: Vec<String>,
    /// `staff` (default) or `contractor`.
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    contract: Option<String>,
    /// Operator roles, comma separated: `ciso`, `security_admin`, `auditor`.
    #[arg(long, value_delimiter = ',')]
    roles: Vec<String>,
    /// Lifetime, e.g. `15m`, `1h`.
    #[arg(long, default_value = "1h")]
    ttl: String,
}

#[derive(Args, Debug)]
pub struct DevTokenArgs {
    #[command(flatten)]
    token: TokenArgs,
    #[arg(long, default_value = "data")]
    data: PathBuf,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Use the development setup of `serve --dev` (certificates and token key in `--data`).
    #[arg(long)]
    dev: bool,
    /// The calling system (dev mode: its client certificate is used).
    #[arg(long)]
    system: Option<String>,
    #[arg(long)]
    sub: Option<String>,
    #[arg(long)]
    section: Option<String>,
    #[arg(long, value_delimiter = ',')]
    amr: Vec<String>,
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    contract: Option<String>,
    #[arg(long)]
    asset: String,
    #[arg(long)]
    action: String,
    #[arg(long)]
    device_issued: bool,
    #[arg(long)]
    purpose: Option<String>,
    #[arg(long)]
    break_glass_reason: Option<String>,
    /// Server address.
    #[arg(long, default_value = "https://127.0.0.1:7443")]
    addr: String,
    /// CA certificate that signed the server's certificate (PEM).
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Subject token (JWT); in dev mode one is minted.
    #[arg(long)]
    token: Option<String>,
    /// TLS server name to expect.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, default_value = "data")]
    data: PathBuf,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
}

/// Makes the development material for the systems in `policies`.
pub fn dev_init(data: &Path, policies: &Path) -> anyhow::Result<bool> {
    let loaded = crate::policy::load(policies, chrono::Utc::now());
    let systems: Vec<(String, String)> = loaded
        .bundle
        .systems
        .iter()
        .map(|s| (s.id.value.clone(), s.identity.value.clone()))
        .collect();
    if systems.is_empty() {
        bail!(
            "no systems found in `{}`; run `sekimori policy check {}`",
            policies.display(),
            policies.display()
        );
    }
    Ok(devpki::ensure(&DevPaths::new(data), &systems)?)
}

pub fn run_dev_init(a: &DevInitArgs) -> anyhow::Result<u8> {
    let created = dev_init(&a.data, &a.policies)?;
    let dir = DevPaths::new(&a.data).dir;
    println!(
        "{} development material in {}",
        if created {
            "created"
        } else {
            "kept the existing"
        },
        dir.display()
    );
    Ok(EXIT_OK)
}

fn mint(data: &Path, t: &TokenArgs) -> anyhow::Result<String> {
    let ttl = parse_duration(&t.ttl)
        .ok_or_else(|| anyhow!("`--ttl {}` is not a duration like 15m or 1h", t.ttl))?;
    let key_path = DevPaths::new(data).token_key();
    let key = std::fs::read_to_string(&key_path)
        .with_context(|| format!("reading the development token key `{}` (run `sekimori serve --dev` or `sekimori dev init` first)", key_path.display()))?;
    let claims = TokenClaims {
        sub: t.sub.clone(),
        section: t.section.clone(),
        kind: t.kind.clone(),
        contract: t.contract.clone(),
        amr: t.amr.clone(),
        roles: t.roles.clone(),
        ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(3600),
    };
    Ok(devpki::sign_token(&key, &claims)?)
}

pub fn run_dev_token(a: &DevTokenArgs) -> anyhow::Result<u8> {
    println!("{}", mint(&a.data, &a.token)?);
    Ok(EXIT_OK)
}

pub fn run_serve(a: &ServeArgs) -> anyhow::Result<u8> {
    init_logging(a.log_format);
    let mut config = match (&a.config, a.dev) {
        (Some(path), _) => Config::load(path)?,
        (None, true) => {
            let created = dev_init(&a.data, &a.policies)?;
            if created {
                println!(
                    "created development CA, certificates and token key in {}",
                    DevPaths::new(&a.data).dir.display()
                );
            }
            let mut c = devpki::dev_config(&a.data, &a.policies, crate::config::DEFAULT_LISTEN)?;
            c.metrics = crate::config::DEFAULT_METRICS_LISTEN.parse().ok();
            c
        }
        (None, false) => bail!("give `--config FILE`, or `--dev` for the development setup"),
    };
    match a.metrics.as_deref() {
        None => {}
        Some("off") => config.metrics = None,
        Some(addr) => {
            config.metrics = Some(
                addr.parse()
                    .with_context(|| format!("`--metrics {addr}` is not an address or `off`"))?,
            )
        }
    }
    if let Some(listen) = &a.listen {
        config.listen = listen
            .parse()
            .with_context(|| format!("`--listen {listen}` is not an address"))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = App::build(config)?;
        let listener = app.bind().await?;
        let addr = listener.local_addr()?;
        let snap = app.pdp.snapshot();
        println!("sekimori listening on https://{addr} (mutual TLS){}", if a.dev { " — development mode" } else { "" });
        if let Some(s) = &snap {
            let c = s.facts().counts;
            println!("  policy {} from {}: {} systems, {} assets, {} grants in force", s.version(), app.config.policy_dir.display(), c.systems, c.assets, c.effective_grants);
        }
        if let Some(m) = app.config.metrics {
            println!("  metrics: http://{m}/metrics");
        }
        println!("  decision log: {} (every answer is committed and fsync'd before it is sent)", app.config.log.path.display());
        if a.dev {
            println!("  development material: {}", DevPaths::new(&a.data).dir.display());
            println!("  verify the log: cargo run --release -- audit verify --db {} --public-key {}", app.config.log.path.display(), DevPaths::new(&a.data).checkpoint_public_key().display());
            println!("first check, from another terminal:");
            println!("  cargo run --release -- check --dev --system juki --sub e1010 --section shimin --amr pwd,fpt \\");
            println!("    --asset juki-main --action read --device-issued --purpose jumin-kiroku");
        }
        app.run(listener, shutdown_signal()).await?;
        println!("sekimori stopped");
        anyhow::Ok(())
    })?;
    Ok(EXIT_OK)
}

pub fn run_check(a: &CheckArgs) -> anyhow::Result<u8> {
    let paths = DevPaths::new(&a.data);
    let (cacert, cert, key) = if a.dev {
        let system = a
            .system
            .as_deref()
            .ok_or_else(|| anyhow!("`--system` names the calling system in dev mode"))?;
        (
            paths.ca_cert(),
            paths.client_cert(system),
            paths.client_key(system),
        )
    } else {
        match (&a.cacert, &a.cert, &a.key) {
            (Some(ca), Some(c), Some(k)) => (ca.clone(), c.clone(), k.clone()),
            _ => bail!("give `--cacert`, `--cert` and `--key`, or `--dev`"),
        }
    };
    let token = match (&a.token, a.dev) {
        (Some(t), _) => t.clone(),
        (None, true) => {
            let sub = a
                .sub
                .clone()
                .ok_or_else(|| anyhow!("`--sub` names the subject"))?;
            mint(
                &a.data,
                &TokenArgs {
                    sub,
                    section: a.section.clone(),
                    amr: a.amr.clone(),
                    kind: a.kind.clone(),
                    contract: a.contract.clone(),
                    roles: Vec::new(),
                    ttl: String::from("5m"),
                },
            )?
        }
        (None, false) => bail!("give `--token`, or `--dev` to mint one"),
    };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading `{}`", p.display()));
    let (ca_pem, cert_pem, key_pem) = (read(&cacert)?, read(&cert)?, read(&key)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let decision = runtime.block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem))
            .domain_name(a.server_name.clone());
        let channel = tonic::transport::Channel::from_shared(a.addr.clone())?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .with_context(|| format!("connecting to {}", a.addr))?;
        let mut client = proto::access_client::AccessClient::new(channel);
        let response = client
            .check(proto::CheckRequest {
                subject_token: token,
                asset: a.asset.clone(),
                action: a.action.clone(),
                env: Some(proto::Environment {
                    device_issued: a.device_issued,
                    purpose: a.purpose.clone().unwrap_or_default(),
                    break_glass_reason: a.break_glass_reason.clone().unwrap_or_default(),
                }),
                request_id: String::new(),
            })
            .await
            .map_err(|s| {
                anyhow!(
                    "the service answered {:?}: {}",
                    s.code(),
                    escape(s.message())
                )
            })?;
        response
            .into_inner()
            .decision
            .ok_or_else(|| anyhow!("the service sent no decision"))
    })?;
    if a.json {
        println!("{}", decision_json(&decision));
    } else {
        print!("{}", render_decision(&decision));
    }
    Ok(if decision.allow { EXIT_OK } else { EXIT_DENIED })
}

fn decision_json(d: &proto::Decision) -> serde_json::Value {
    serde_json::json!({
        "allow": d.allow, "reason": d.reason, "message_ja": d.message_ja, "message_en": d.message_en,
        "rule": d.rule.as_ref().map(|r| serde_json::json!({"kind": r.kind, "id": r.id, "source": r.source})),
        "obligations": d.obligations.iter().map(|o| serde_json::json!({"kind": o.kind, "text": o.text})).collect::<Vec<_>>(),
        "label": d.label, "policy_version": d.policy_version, "decision_id": d.decision_id,
    })
}

fn render_decision(d: &proto::Decision) -> String {
    let mut out = format!(
        "{}  ({})\n  {}\n  {}\n",
        if d.allow {
            "ALLOW 許可"
        } else {
            "DENY 拒否"
        },
        escape(&d.reason),
        escape(&d.message_ja),
        escape(&d.message_en)
    );
    if let Some(r) = &d.rule {
        out.push_str(&format!(
            "rule: {} `{}`{}\n",
            escape(&r.kind),
            escape(&r.id),
            if r.source.is_empty() {
                String::new()
            } else {
                format!(" at {}", escape(&r.source))
            }
        ));
    }
    if !d.label.is_empty() {
        out.push_str(&format!("label: {}\n", escape(&d.label)));
    }
    if !d.obligations.is_empty() {
        let names: Vec<String> = d
            .obligations
            .iter()
            .map(|o| {
                if o.text.is_empty() {
                    escape(&o.kind)
                } else {
                    format!("{}({})", escape(&o.kind), escape(&o.text))
                }
            })
            .collect();
        out.push_str(&format!(
            "obligations (carry out or refuse): {}\n",
            names.join(", ")
        ));
    }
    out.push_str(&format!(
        "policy version: {}\ndecision id: {}\n",
        escape(&d.policy_version),
        escape(&d.decision_id)
    ));
    out
}
