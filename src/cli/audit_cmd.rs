//! `sekimori audit query|get|export|summary|verify|checkpoint` — for the audit committee.
//!
//! Against the running service (with an operator certificate and a token with the
//! `auditor` or `ciso` role; `--dev` uses the development ones), or offline on the store
//! file for `verify` and `checkpoint` (`--db`). Human output uses JST and the names of
//! sections and assets from the policy bundle; `--format json|csv` for tools and Excel.

use super::{EXIT_OK, EXIT_VERIFY_FAILED};
use crate::audit::checkpoint::decode_public_key;
use crate::audit::store::{Checkpoint, Store};
use crate::audit::verify::verify;
use crate::devpki::{self, DevPaths, TokenClaims};
use crate::policy::diag::escape;
use crate::server::proto::audit_client::AuditClient;
use crate::server::proto::{
    self, ExportDecisionsRequest, Filter, GetDecisionRequest, QueryDecisionsRequest,
    SummarizeRequest, VerifyLogRequest,
};
use crate::time::{format_jst, parse_policy_time};
use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Records matching a filter, newest first (one page; `--page-token` for the next).
    Query(QueryArgs),
    /// One record by its decision id.
    Get(GetArgs),
    /// Every record matching a filter, as CSV (Excel: UTF-8 with BOM) or JSON Lines.
    Export(ExportArgs),
    /// Counts by day (JST), section, asset, reason or decision.
    Summary(SummaryArgs),
    /// Verify the decision log: hashes, sequence, checkpoints (exit 4 on failure, with the
    /// first bad record). `--db FILE` verifies a store file offline.
    Verify(VerifyArgs),
    /// Export the latest signed checkpoint, to keep where the server cannot write.
    Checkpoint(CheckpointArgs),
    /// Retention: move records older than the cutoff (up to a signed checkpoint) into an
    /// archive file and remove them from the store; both still verify.
    Archive(ArchiveArgs),
}

#[derive(Args, Debug)]
pub struct ArchiveArgs {
    /// The store file.
    #[arg(long)]
    db: PathBuf,
    /// Archive records older than this time (JST date or RFC 3339).
    #[arg(long, conflicts_with = "config")]
    before: Option<String>,
    /// Or: archive records older than `log.retention` of this config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The archive file to write (JSON Lines).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Use the development setup of `serve --dev` (operator certificate, auditor token).
    #[arg(long)]
    dev: bool,
    #[arg(long, default_value = "https://127.0.0.1:7443")]
    addr: String,
    #[arg(long)]
    cacert: Option<PathBuf>,
    /// Operator client certificate (PEM).
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// Operator token (JWT with the `auditor` or `ciso` role).
    #[arg(long, env = "SEKIMORI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, default_value = "data")]
    data: PathBuf,
}

#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// From this time (JST date or RFC 3339), inclusive.
    #[arg(long)]
    from: Option<String>,
    /// Until this time (JST date or RFC 3339), exclusive.
    #[arg(long)]
    until: Option<String>,
    /// The person (user id).
    #[arg(long)]
    sub: Option<String>,
    #[arg(long)]
    section: Option<String>,
    #[arg(long)]
    system: Option<String>,
    #[arg(long)]
    asset: Option<String>,
    #[arg(long)]
    action: Option<String>,
    /// allow or deny
    #[arg(long)]
    decision: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    /// public, internal or secret
    #[arg(long)]
    tier: Option<String>,
    #[arg(long)]
    policy_version: Option<String>,
    /// decision, rejected, admin, audit, reload, start, stop
    #[arg(long)]
    kind: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutFormat {
    Human,
    Json,
    Csv,
}

#[derive(Args, Debug)]
pub struct QueryArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    filter: FilterArgs,
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[arg(long, default_value = "")]
    page_token: String,
    #[arg(long)]
    oldest_first: bool,
    #[arg(long, value_enum, default_value = "human")]
    format: OutFormat,
    /// Policy bundle for section and asset names.
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    #[command(flatten)]
    conn: Connection,
    id: String,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    filter: FilterArgs,
    #[arg(long, value_enum, default_value = "csv")]
    format: OutFormat,
    /// Output file (default: standard output).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
}

#[derive(Args, Debug)]
pub struct SummaryArgs {
    #[command(flatten)]
    conn: Connection,
    #[command(flatten)]
    filter: FilterArgs,
    /// day, section, asset, reason or decision
    #[arg(long, default_value = "day")]
    by: String,
    #[arg(long, value_enum, default_value = "human")]
    format: OutFormat,
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Verify this store file offline instead of asking the service.
    #[arg(long)]
    db: Option<PathBuf>,
    /// The checkpoint public key (`ed25519:...`); offline, signatures are checked only with it.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// A checkpoint exported earlier with `audit checkpoint` (offline).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Verify an archive file written by `audit archive` instead (offline).
    #[arg(long, conflicts_with = "db")]
    archive: Option<PathBuf>,
    /// Also check what the chain does not cover: every record's query columns, in the log
    /// and in the auditors' index, against its stored bytes (offline, with `--db`).
    #[arg(long, requires = "db")]
    index: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Connection,
}

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    /// The store file.
    #[arg(long)]
    db: PathBuf,
    /// Where to write the checkpoint (JSON).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<u8> {
    match cmd {
        AuditCommand::Verify(a) if a.db.is_some() || a.archive.is_some() => run_verify_offline(&a),
        AuditCommand::Checkpoint(a) => run_checkpoint(&a),
        AuditCommand::Archive(a) => run_archive(&a),
        other => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_online(other))
        }
    }
}

impl FilterArgs {
    fn to_proto(&self) -> anyhow::Result<Filter> {
        let time = |t: &Option<String>, flag: &str| -> anyhow::Result<i64> {
            match t {
                None => Ok(0),
                Some(text) => parse_policy_time(text)
                    .map(|t| t.timestamp_micros())
                    .ok_or_else(|| anyhow!("`--{flag} {text}` is not a date or time (2026-06-01 or 2026-06-01T09:00:00+09:00)")),
            }
        };
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        Ok(Filter {
            from_us: time(&self.from, "from")?,
            until_us: time(&self.until, "until")?,
            sub: s(&self.sub),
            section: s(&self.section),
            system: s(&self.system),
            asset: s(&self.asset),
            action: s(&self.action),
            decision: s(&self.decision),
            reason: s(&self.reason),
            tier: s(&self.tier),
            policy_version: s(&self.policy_version),
            kind: s(&self.kind),
        })
    }
}

async fn connect(c: &Connection) -> anyhow::Result<(AuditClient<Channel>, String)> {
    let (channel, token) = connect_channel(c, "auditor").await?;
    Ok((AuditClient::new(channel), token))
}

/// An operator channel and token; in dev mode the token is minted with `dev_role`.
pub async fn connect_channel(c: &Connection, dev_role: &str) -> anyhow::Result<(Channel, String)> {
    let paths = DevPaths::new(&c.data);
    let (ca, cert, key) = if c.dev {
        (paths.ca_cert(), paths.operator_cert(), paths.operator_key())
    } else {
        match (&c.cacert, &c.cert, &c.key) {
            (Some(a), Some(b), Some(k)) => (a.clone(), b.clone(), k.clone()),
            _ => {
                bail!("give `--cacert`, `--cert` and `--key` (an operator certificate), or `--dev`")
            }
        }
    };
    let token = match (&c.token, c.dev) {
        (Some(t), _) => t.clone(),
        (None, true) => {
            let key_pem = std::fs::read_to_string(paths.token_key()).with_context(|| {
                format!(
                    "reading `{}` (start `serve --dev` first)",
                    paths.token_key().display()
                )
            })?;
            devpki::sign_token(
                &key_pem,
                &TokenClaims {
                    sub: format!("{dev_role}-dev"),
                    roles: vec![dev_role.to_string()],
                    ttl_secs: 600,
                    ..TokenClaims::default()
                },
            )?
        }
        (None, false) => {
            bail!("give `--token` (or SEKIMORI_TOKEN) with the auditor role, or `--dev`")
        }
    };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading `{}`", p.display()));
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&ca)?))
        .identity(Identity::from_pem(read(&cert)?, read(&key)?))
        .domain_name(c.server_name.clone());
    let channel = Channel::from_shared(c.addr.clone())?
        .tls_config(tls)?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", c.addr))?;
    Ok((channel, token))
}

pub fn authed<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(r)
}

pub fn status(s: tonic::Status) -> anyhow::Error {
    anyhow!(
        "the service answered {:?}: {}",
        s.code(),
        escape(s.message())
    )
}

/// Section and asset names from the bundle, when it can be read.
struct Names {
    sections: HashMap<String, String>,
    assets: HashMap<String, String>,
}

impl Names {
    fn load(dir: &Path) -> Names {
        let mut n = Names {
            sections: HashMap::new(),
            assets: HashMap::new(),
        };
        if dir.join("organization.yaml").is_file() {
            let loaded = crate::policy::load(dir, chrono::Utc::now());
            for s in loaded.bundle.sections() {
                if let Some(name) = &s.name {
                    n.sections.insert(s.id.value.clone(), name.clone());
                }
            }
            for a in &loaded.bundle.assets {
                if let Some(name) = &a.name {
                    n.assets.insert(a.id.value.clone(), name.clone());
                }
            }
        }
        n
    }

    fn section(&self, id: &str) -> String {
        match self.sections.get(id) {
            Some(name) if !id.is_empty() => format!("{name}({id})"),
            _ => id.to_string(),
        }
    }

    fn asset(&self, id: &str) -> String {
        match self.assets.get(id) {
            Some(name) if !id.is_empty() => format!("{name}({id})"),
            _ => id.to_string(),
        }
    }
}

/// The fields of a record an auditor reads, from its canonical JSON.
struct View {
    seq: u64,
    /// RFC 3339 in JST, microseconds (CSV).
    time: String,
    /// `YYYY-MM-DD HH:MM:SS` in JST (tables).
    short_time: String,
    kind: String,
    system: String,
    sub: String,
    section: String,
    subject_kind: String,
    contract: String,
    asset: String,
    level: String,
    action: String,
    decision: String,
    reason: String,
    rule: String,
    obligations: String,
    policy_version: String,
    request_id: String,
    detail: String,
    id: String,
}

fn view(r: &proto::LogRecord) -> View {
    let v: serde_json::Value = serde_json::from_str(&r.canonical_json).unwrap_or_default();
    let s = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
    let time = chrono::DateTime::from_timestamp_micros(r.time_us)
        .map(format_jst)
        .unwrap_or_default();
    let short_time = chrono::DateTime::from_timestamp_micros(r.time_us)
        .map(|t| {
            t.with_timezone(&crate::time::jst())
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default();
    View {
        seq: r.seq,
        time,
        short_time,
        kind: r.kind.clone(),
        system: s(&v["system"]),
        sub: s(&v["subject"]["sub"]),
        section: s(&v["subject"]["section"]),
        subject_kind: s(&v["subject"]["kind"]),
        contract: s(&v["subject"]["contract"]),
        asset: s(&v["asset"]["id"]),
        level: v["asset"]["confidentiality"]
            .as_str()
            .map(|l| format!("機密性{l}"))
            .unwrap_or_default(),
        action: s(&v["action"]),
        decision: s(&v["decision"]),
        reason: s(&v["reason"]),
        rule: s(&v["rule"]),
        obligations: v["obligations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default(),
        policy_version: s(&v["policy_version"]),
        request_id: s(&v["request_id"]),
        detail: s(&v["detail"]),
        id: r.id.clone(),
    }
}

const CSV_HEADER: [&str; 19] = [
    "seq",
    "time_jst",
    "kind",
    "system",
    "sub",
    "section",
    "subject_kind",
    "contract",
    "asset",
    "confidentiality",
    "action",
    "decision",
    "reason",
    "rule",
    "obligations",
    "policy_version",
    "request_id",
    "detail",
    "id",
];

/// A CSV field, quoted; a leading `=`, `+`, `-`, `@`, tab or CR is neutralized with `'` so
/// that a spreadsheet never runs it as a formula.
pub fn csv_field(v: &str) -> String {
    let guarded = if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_string()
    };
    format!("\"{}\"", guarded.replace('"', "\"\""))
}

/// One record as a CSV line, as `audit export --format csv` writes it.
pub fn csv_record(r: &proto::LogRecord) -> String {
    csv_row(&view(r))
}

fn csv_row(v: &View) -> String {
    let seq = v.seq.to_string();
    let fields = [
        &seq,
        &v.time,
        &v.kind,
        &v.system,
        &v.sub,
        &v.section,
        &v.subject_kind,
        &v.contract,
        &v.asset,
        &v.level,
        &v.action,
        &v.decision,
        &v.reason,
        &v.rule,
        &v.obligations,
        &v.policy_version,
        &v.request_id,
        &v.detail,
        &v.id,
    ];
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

fn table(rows: &[View], names: &Names) -> String {
    let mut out = String::from(
        "seq | 日時 time (JST) | 種別 kind | システム system | 利用者 person | 課 section | 情報資産 asset | 操作 action | 判定 decision | 理由 reason\n",
    );
    for v in rows {
        let decision = match v.decision.as_str() {
            "allow" => "許可 allow",
            "deny" => "拒否 deny",
            _ => "",
        };
        out.push_str(&escape(&format!(
            "{} | {} | {} | {} | {} | {} | {} | {} | {} | {}{}",
            v.seq,
            v.short_time,
            v.kind,
            v.system,
            v.sub,
            names.section(&v.section),
            names.asset(&v.asset),
            v.action,
            decision,
            v.reason,
            if v.detail.is_empty() {
                String::new()
            } else {
                format!(" ({})", v.detail)
            }
        )));
        out.push('\n');
    }
    out
}

async fn run_online(cmd: AuditCommand) -> anyhow::Result<u8> {
    match cmd {
        AuditCommand::Query(a) => {
            let (mut c, token) = connect(&a.conn).await?;
            let r = c
                .query_decisions(authed(
                    QueryDecisionsRequest {
                        filter: Some(a.filter.to_proto()?),
                        page_size: a.limit,
                        page_token: a.page_token.clone(),
                        oldest_first: a.oldest_first,
                    },
                    &token,
                )?)
                .await
                .map_err(status)?
                .into_inner();
            let views: Vec<View> = r.records.iter().map(view).collect();
            match a.format {
                OutFormat::Json => {
                    for rec in &r.records {
                        println!("{}", rec.canonical_json);
                    }
                }
                OutFormat::Csv => {
                    print!("\u{feff}{}\r\n", CSV_HEADER.join(","));
                    for v in &views {
                        print!("{}\r\n", csv_row(v));
                    }
                }
                OutFormat::Human => {
                    print!("{}", table(&views, &Names::load(&a.policies)));
                    println!(
                        "{} records{}",
                        views.len(),
                        if r.next_page_token.is_empty() {
                            String::new()
                        } else {
                            format!("; more: --page-token {}", r.next_page_token)
                        }
                    );
                }
            }
            Ok(EXIT_OK)
        }
        AuditCommand::Get(a) => {
            let (mut c, token) = connect(&a.conn).await?;
            let r = c
                .get_decision(authed(GetDecisionRequest { id: a.id.clone() }, &token)?)
                .await
                .map_err(status)?
                .into_inner();
            let v: serde_json::Value = serde_json::from_str(&r.canonical_json).unwrap_or_default();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({ "seq": r.seq, "hash": r.hash, "record": v })
                )?
            );
            Ok(EXIT_OK)
        }
        AuditCommand::Export(a) => {
            let (mut c, token) = connect(&a.conn).await?;
            let filter = a.filter.to_proto()?;
            // The total first, for the progress bar.
            let total: u64 = c
                .summarize(authed(
                    SummarizeRequest {
                        filter: Some(filter.clone()),
                        by: String::from("decision"),
                    },
                    &token,
                )?)
                .await
                .map_err(status)?
                .into_inner()
                .rows
                .iter()
                .map(|r| r.total)
                .sum();
            let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                indicatif::ProgressBar::new(total)
            } else {
                indicatif::ProgressBar::hidden()
            };
            let mut out: Box<dyn std::io::Write> = match &a.out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating `{}`", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout())),
            };
            if a.format == OutFormat::Csv || a.format == OutFormat::Human {
                write!(out, "\u{feff}{}\r\n", CSV_HEADER.join(","))?;
            }
            let mut stream = c
                .export_decisions(authed(
                    ExportDecisionsRequest {
                        filter: Some(filter),
                        oldest_first: true,
                    },
                    &token,
                )?)
                .await
                .map_err(status)?
                .into_inner();
            let mut n = 0u64;
            while let Some(chunk) = stream.message().await.map_err(status)? {
                for rec in &chunk.records {
                    match a.format {
                        OutFormat::Json => writeln!(out, "{}", rec.canonical_json)?,
                        _ => write!(out, "{}\r\n", csv_row(&view(rec)))?,
                    }
                    n += 1;
                }
                bar.set_position(n);
            }
            out.flush()?;
            bar.finish_and_clear();
            eprintln!("exported {n} records");
            Ok(EXIT_OK)
        }
        AuditCommand::Summary(a) => {
            let (mut c, token) = connect(&a.conn).await?;
            let r = c
                .summarize(authed(
                    SummarizeRequest {
                        filter: Some(a.filter.to_proto()?),
                        by: a.by.clone(),
                    },
                    &token,
                )?)
                .await
                .map_err(status)?
                .into_inner();
            let names = Names::load(&a.policies);
            match a.format {
                OutFormat::Json => println!("{}", serde_json::to_string_pretty(&r.rows.iter().map(|x| serde_json::json!({"key": x.key, "allow": x.allow, "deny": x.deny, "total": x.total})).collect::<Vec<_>>())?),
                OutFormat::Csv => {
                    print!("\u{feff}\"{}\",\"allow\",\"deny\",\"total\"\r\n", a.by);
                    for x in &r.rows {
                        print!("{},{},{},{}\r\n", csv_field(&x.key), x.allow, x.deny, x.total);
                    }
                }
                OutFormat::Human => {
                    println!("{} | 許可 allow | 拒否 deny | 合計 total", a.by);
                    for x in &r.rows {
                        let key = match a.by.as_str() {
                            "section" => names.section(&x.key),
                            "asset" => names.asset(&x.key),
                            _ => x.key.clone(),
                        };
                        println!("{} | {} | {} | {}", escape(&key), x.allow, x.deny, x.total);
                    }
                }
            }
            Ok(EXIT_OK)
        }
        AuditCommand::Verify(a) => {
            let (mut c, token) = connect(&a.conn).await?;
            let r = c
                .verify_log(authed(VerifyLogRequest {}, &token)?)
                .await
                .map_err(status)?
                .into_inner();
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": r.ok, "records": r.records, "last_seq": r.last_seq, "last_hash": r.last_hash, "checkpoints": r.checkpoints, "first_bad_seq": r.first_bad_seq, "problem": r.problem})
                );
            } else if r.ok {
                println!(
                    "OK 改ざんなし: {} records up to seq {}, {} checkpoints with valid signatures",
                    r.records, r.last_seq, r.checkpoints
                );
            } else {
                println!(
                    "FAILED 検証失敗: first bad record: {}\n  {}",
                    r.first_bad_seq,
                    escape(&r.problem)
                );
            }
            Ok(if r.ok { EXIT_OK } else { EXIT_VERIFY_FAILED })
        }
        AuditCommand::Checkpoint(_) | AuditCommand::Archive(_) => Ok(EXIT_OK),
    }
}

fn open(db: &Path) -> anyhow::Result<Store> {
    if !db.is_file() {
        return Err(anyhow!("`{}` is not a decision log file", db.display()));
    }
    Store::open_read_only(db).with_context(|| format!("opening `{}`", db.display()))
}

fn run_verify_offline(a: &VerifyArgs) -> anyhow::Result<u8> {
    let db =
        a.db.as_deref()
            .ok_or_else(|| anyhow!("`--db` names the store file"))?;
    let store = open(db)?;
    let key = match &a.public_key {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading `{}`", p.display()))?;
            Some(decode_public_key(&text).ok_or_else(|| {
                anyhow!(
                    "`{}` is not a checkpoint public key (ed25519:BASE64)",
                    p.display()
                )
            })?)
        }
        None => None,
    };
    let external: Option<Checkpoint> = match &a.checkpoint {
        Some(p) => Some(
            serde_json::from_str(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("reading `{}`", p.display()))?,
            )
            .with_context(|| format!("`{}` is not an exported checkpoint", p.display()))?,
        ),
        None => None,
    };
    let total = store.count().unwrap_or(0);
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new(total)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let started = std::time::Instant::now();
    let report = verify(&store, key.as_deref(), external.as_ref(), |n| {
        bar.set_position(n)
    })?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    // The columns are checked against bytes the chain vouches for: only after it verifies.
    let started = std::time::Instant::now();
    let columns = if a.index && report.ok() {
        Some(crate::audit::verify::verify_columns(&store, |_| {})?)
    } else {
        None
    };
    let columns_secs = started.elapsed().as_secs_f64();
    let columns_ok = columns.as_ref().is_none_or(|c| c.problem.is_none());
    if a.json && a.index {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"chain": &report, "columns": &columns})
            )?
        );
    } else if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match &report.problem {
            None => println!(
                "OK 改ざんなし: {} records (seq {}..={}), {} checkpoints{}, in {secs:.1} s",
                report.records,
                report.first_seq.unwrap_or(0),
                report.last_seq.unwrap_or(0),
                report.checkpoints,
                if report.checkpoints_signature_checked {
                    " with valid signatures"
                } else {
                    " (signatures not checked: give --public-key)"
                }
            ),
            Some(p) => {
                println!("FAILED 検証失敗: first bad record: {}", p.seq);
                println!("  {}", p.what);
            }
        }
        match columns.as_ref().map(|c| (c, &c.problem)) {
            None => {}
            Some((c, None)) => println!(
                "OK 索引一致: the query columns of {} records and the index ({} indexed) match the records' bytes, in {columns_secs:.1} s",
                c.records, c.indexed
            ),
            Some((_, Some(p))) => {
                println!(
                    "FAILED 索引不一致: first record whose columns differ: {}",
                    p.seq
                );
                println!("  {}", p.what);
            }
        }
    }
    Ok(if report.ok() && columns_ok {
        EXIT_OK
    } else {
        EXIT_VERIFY_FAILED
    })
}

fn run_archive(a: &ArchiveArgs) -> anyhow::Result<u8> {
    let cutoff = match (&a.before, &a.config) {
        (Some(t), _) => {
            parse_policy_time(t).ok_or_else(|| anyhow!("`--before {t}` is not a date or time"))?
        }
        (None, Some(c)) => {
            let cfg = crate::config::Config::load(c)?;
            let keep = cfg
                .log
                .retention
                .ok_or_else(|| anyhow!("`{}` sets no `log.retention`", c.display()))?;
            chrono::Utc::now()
                - chrono::Duration::from_std(keep)
                    .map_err(|_| anyhow!("`log.retention` is too long"))?
        }
        (None, None) => bail!("give `--before DATE` or `--config FILE` (with `log.retention`)"),
    };
    if !a.db.is_file() {
        bail!("`{}` is not a decision log file", a.db.display());
    }
    let store = Store::open(&a.db).with_context(|| format!("opening `{}`", a.db.display()))?;
    let r = crate::audit::archive::archive(&store, cutoff.timestamp_micros(), &a.out)?;
    println!(
        "archived records {}..={} ({} records, older than {}) to {}; the store now starts after record {}",
        r.from_seq,
        r.to_seq,
        r.records,
        format_jst(cutoff),
        a.out.display(),
        r.to_seq
    );
    Ok(EXIT_OK)
}

fn run_checkpoint(a: &CheckpointArgs) -> anyhow::Result<u8> {
    let store = open(&a.db)?;
    let latest = store
        .checkpoints()?
        .pop()
        .ok_or_else(|| anyhow!("the log has no checkpoint yet"))?;
    std::fs::write(&a.out, serde_json::to_string_pretty(&latest)? + "\n")
        .with_context(|| format!("writing `{}`", a.out.display()))?;
    println!(
        "checkpoint at record {} written to {}",
        latest.seq,
        a.out.display()
    );
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_neutralizes_formulas_and_quotes() {
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("+1"), "\"'+1\"");
        assert_eq!(csv_field("-1"), "\"'-1\"");
        assert_eq!(csv_field("@SUM"), "\"'@SUM\"");
        assert_eq!(csv_field("市民課"), "\"市民課\"");
    }
}
