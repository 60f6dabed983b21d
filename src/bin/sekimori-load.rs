//! `sekimori-load`: a gRPC load tool for `Access.Check` over mutual TLS.
//!
//! In one run it starts two servers as child processes on loopback — `sekimori serve --dev`
//! (durable decision log, real subject tokens verified, the given policy directory) and an
//! empty tonic handler with the same TLS set-up and the same message shapes — and sends both
//! the same load: the same requests, in the same order, over the same number of connections
//! and concurrent callers. It prints a JSON summary per target (calls/s, p50/p90/p99/p999,
//! errors by gRPC status) and the throughput ratio sekimori / empty handler, which SPEC §11
//! wants at least 0.5 with sekimori's p99 at most 5 ms. Beside each target it reports the
//! CPU per call of the server, by thread (tokio workers, the log's writer, indexer and
//! checkpointer), and of the load tool itself, read from Linux `/proc` over the measured
//! interval, and the ratio of the two servers' CPU per call. For sekimori it adds, under
//! `log`, what its decision log did meanwhile, from the server's own metrics: group commits
//! per second, records per commit, and how long a commit (mostly its fsync) took; and under
//! `handler`, how long its `Check` handler took by its own clock, the commit included,
//! which sets the time a call spends in the server's handler apart from the time in TLS,
//! HTTP/2, the sockets and the load tool.
//!
//! `--pin` runs the servers on core 0 and the load on core 1 (through `taskset`), so the
//! two do not compete for the same core.
//!
//! `--interleave 2s` keeps both servers running and measures them in alternating slices
//! (empty, sekimori, sekimori, empty, …) instead of one after the other, so that a host
//! whose speed drifts from one minute to the next slows both alike. What sekimori does
//! between its slices (its indexer catching up) is reported, and charged against it in a
//! second, conservative ratio.
//!
//! `--rate 6000` (or `--rate 50%`) sends on a fixed schedule instead: an open loop, calls
//! due at evenly spaced times whatever the answers, as the city's systems send theirs. Each
//! call's latency then runs from the time it was due, so a call the tool sent late, or one
//! that waited because `--concurrency` calls were already in flight, counts its wait: a
//! server that stalls cannot hide it by slowing the callers (what closed-loop callers, which
//! send only after an answer, let it do). `50%` offers half the rate the empty handler reached
//! closed-loop in the same run, which reads SPEC §11 word for word: sekimori serves half the
//! empty handler's throughput, and its p99 at that load is what it is measured at.
//!
//! `--target all` adds a third server between the two: the empty handler again, but making a
//! record of each call durable before it answers (the request and the answer, appended to a
//! file by one writer thread in group commits, each group `fdatasync`ed). It does nothing
//! else, so its rate over the empty handler's shows what this machine's disk leaves of the
//! empty handler's rate once every answer waits for an fsync: the floor under the ratio
//! SPEC §11 asks of sekimori, which must wait for the same.
//!
//! Build both binaries, then run: `cargo build --release --bins && target/release/sekimori-load`.

use anyhow::{Context, bail};
use clap::Parser;
use sekimori::devpki::{self, DevPaths, TokenClaims};
use sekimori::server::proto::access_client::AccessClient;
use sekimori::server::proto::access_server::{Access, AccessServer};
use sekimori::server::proto::{
    BatchCheckRequest, BatchCheckResponse, CheckRequest, CheckResponse, Decision, Environment,
    ListAccessibleRequest, ListAccessibleResponse, Obligation, Rule,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sekimori-load",
    about = "Load Access.Check of sekimori and of an empty tonic handler, in one run"
)]
struct Args {
    /// Concurrent callers (each awaits its answer before sending the next request); with
    /// `--rate`, the most calls in flight (a call due beyond it waits, and its wait counts).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Send on a fixed schedule instead of closed-loop callers: calls per second (`6000`),
    /// or a share of the empty handler's rate measured closed-loop first in the same run
    /// (`50%`, with `--target both` or `all`). Latency runs from each call's due time.
    #[arg(long, value_parser = parse_rate, conflicts_with_all = ["requests", "interleave"])]
    rate: Option<Rate>,
    /// HTTP/2 connections, spread over the systems that hold assets.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How long to measure each target (after `--warmup`), e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop each target after this many calls instead (overrides `--duration`).
    #[arg(long)]
    requests: Option<u64>,
    /// Load before measuring, per target.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Measure the two targets in alternating slices of this length (e.g. `1s`), both
    /// servers running throughout, instead of one after the other: a host whose speed drifts
    /// then slows both alike. Needs `--target both`; not with `--requests`, nor with
    /// `--reload-every` (a reload's CPU would fall into the empty handler's slices too).
    #[arg(long, value_parser = parse_duration, conflicts_with_all = ["requests", "reload_every"])]
    interleave: Option<Duration>,
    /// Which servers to load.
    #[arg(long, value_enum, default_value = "both")]
    target: Target,
    /// Policy directory served by sekimori (the requests are drawn from it).
    #[arg(long, default_value = "policies")]
    policies: PathBuf,
    /// The `sekimori` binary (default: beside this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Servers on core 0, load on core 1 (needs `taskset` and two cores).
    #[arg(long)]
    pin: bool,
    /// Send sekimori SIGHUP (a full reload of the policy directory) this often while it is
    /// under load, e.g. `3s`: SPEC §11 wants zero failed requests across reloads.
    #[arg(long, value_parser = parse_duration)]
    reload_every: Option<Duration>,
    /// Also write the JSON summary to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Serve the empty handler on this address with the dev certificates in `--data`, then
    /// wait (used by the tool itself).
    #[arg(long, hide = true)]
    serve_empty: Option<String>,
    #[arg(long, hide = true)]
    data: Option<PathBuf>,
    /// With `--serve-empty`: make a record of each call durable in this file before
    /// answering (used by the tool itself for `--target all`).
    #[arg(long, hide = true, requires = "serve_empty")]
    durable_log: Option<PathBuf>,
}

/// Which servers a run loads (`--target`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The empty handler, then sekimori.
    Both,
    /// The empty handler, the durable empty handler, then sekimori.
    All,
    Sekimori,
    Empty,
    /// The empty handler making a record of each call durable before it answers.
    DurableEmpty,
}

impl Target {
    /// The servers it loads, in the order they are measured.
    fn servers(self) -> &'static [ServerKind] {
        match self {
            Target::Both => &[ServerKind::Empty, ServerKind::Sekimori],
            Target::All => &[
                ServerKind::Empty,
                ServerKind::DurableEmpty,
                ServerKind::Sekimori,
            ],
            Target::Sekimori => &[ServerKind::Sekimori],
            Target::Empty => &[ServerKind::Empty],
            Target::DurableEmpty => &[ServerKind::DurableEmpty],
        }
    }
}

/// One server the tool starts and loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerKind {
    Empty,
    DurableEmpty,
    Sekimori,
}

impl ServerKind {
    /// Its key in the JSON summary.
    fn key(self) -> &'static str {
        match self {
            ServerKind::Empty => "empty",
            ServerKind::DurableEmpty => "durable_empty",
            ServerKind::Sekimori => "sekimori",
        }
    }
}

/// How fast `--rate` sends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Rate {
    /// Calls per second.
    PerSecond(f64),
    /// This share of the empty handler's closed-loop rate in the same run (0.5 for `50%`).
    ShareOfEmpty(f64),
}

fn parse_rate(text: &str) -> Result<Rate, String> {
    let bad = || {
        format!(
            "not a rate: {text} (calls per second, e.g. 6000, or a share of the empty handler's rate, e.g. 50%)"
        )
    };
    let (number, share) = match text.strip_suffix('%') {
        Some(n) => (n, true),
        None => (text, false),
    };
    let n: f64 = number.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n <= 0.0 {
        return Err(bad());
    }
    Ok(if share {
        Rate::ShareOfEmpty(n / 100.0)
    } else {
        Rate::PerSecond(n)
    })
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (num, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {text}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("unknown unit in {text} (use ms, s or m)")),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.pin && std::env::var_os("SEKIMORI_LOAD_PINNED").is_none() {
        // Re-run this process on core 1; the servers it starts go to core 0.
        let status = Command::new("taskset")
            .arg("-c")
            .arg("1")
            .arg(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env("SEKIMORI_LOAD_PINNED", "1")
            .status()
            .context("running taskset (util-linux) for --pin")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Some(addr) = &args.serve_empty {
        let data = args.data.clone().context("--serve-empty needs --data")?;
        let durable = match &args.durable_log {
            Some(path) => Some(DurableLog::open(path)?),
            None => None,
        };
        return rt.block_on(serve_empty(addr, &data, durable));
    }
    rt.block_on(run(args))
}

// ---------------------------------------------------------------------------------------
// The empty handler: TLS with required client certificates, same messages, no work.

struct Empty {
    response: CheckResponse,
    /// Where each call's record is made durable before the answer (the durable empty
    /// handler), if anywhere.
    durable: Option<DurableLog>,
}

#[tonic::async_trait]
impl Access for Empty {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let response = self.response.clone();
        if let Some(log) = &self.durable {
            use prost::Message;
            let mut record = request.into_inner().encode_to_vec();
            response.encode(&mut record).map_err(|_| {
                tonic::Status::internal("the durable empty handler could not encode")
            })?;
            log.append(record).await?;
        }
        Ok(tonic::Response::new(response))
    }

    async fn batch_check(
        &self,
        _request: tonic::Request<BatchCheckRequest>,
    ) -> Result<tonic::Response<BatchCheckResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("empty handler"))
    }

    async fn list_accessible(
        &self,
        _request: tonic::Request<ListAccessibleRequest>,
    ) -> Result<tonic::Response<ListAccessibleResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("empty handler"))
    }
}

/// A response the size and shape of a real allow with an obligation.
fn typical_response() -> CheckResponse {
    CheckResponse {
        decision: Some(Decision {
            allow: true,
            reason: "grant".into(),
            message_ja: "付与 shimin-juki-read により許可されます。".into(),
            message_en: "Allowed by grant shimin-juki-read.".into(),
            rule: Some(Rule {
                kind: "allow".into(),
                id: "grant".into(),
                source: "grants/shimin.yaml:3:7".into(),
            }),
            obligations: vec![Obligation {
                kind: "log_purpose".into(),
                text: "利用目的を記録すること".into(),
            }],
            label: "機密性3 / 完全性2 / 可用性2".into(),
            policy_version: "sha256:0123456789abcdef".into(),
            decision_id: "01936b1e-7c3a-7d2e-9f00-0123456789ab".into(),
        }),
    }
}

/// The durable empty handler's log: one writer thread appends each group of waiting
/// records with one write and one `fdatasync`, then answers the group. The file is
/// preallocated and rewritten from its start when full, as SQLite reuses its WAL, so a
/// commit never grows it (growing a file costs an fsync more here).
#[derive(Clone)]
struct DurableLog {
    queue: std::sync::mpsc::Sender<(Vec<u8>, tokio::sync::oneshot::Sender<bool>)>,
}

/// How large the durable empty handler's file is before it wraps (SQLite's log restarts its
/// WAL at about this size under load).
const DURABLE_LOG_BYTES: u64 = 16 << 20;

impl DurableLog {
    fn open(path: &Path) -> anyhow::Result<DurableLog> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..DURABLE_LOG_BYTES >> 20 {
            file.write_all(&zeros)?;
        }
        file.sync_all()?;
        let (queue, waiting) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("durable-writer".into())
            .spawn(move || write_groups(&file, &waiting))?;
        Ok(DurableLog { queue })
    }

    /// Returns once `record` is on disk; `UNAVAILABLE` if it could not be made so.
    async fn append(&self, record: Vec<u8>) -> Result<(), tonic::Status> {
        let unavailable = || tonic::Status::unavailable("the durable empty handler's log failed");
        let (done, written) = tokio::sync::oneshot::channel();
        self.queue.send((record, done)).map_err(|_| unavailable())?;
        match written.await {
            Ok(true) => Ok(()),
            _ => Err(unavailable()),
        }
    }
}

/// The durable empty handler's writer: every record waiting when a commit starts joins it.
/// After a failed write or sync it answers `false` to everything, as a log must (a later
/// group could be durable on top of a lost one).
fn write_groups(
    file: &std::fs::File,
    waiting: &std::sync::mpsc::Receiver<(Vec<u8>, tokio::sync::oneshot::Sender<bool>)>,
) {
    use std::os::unix::fs::FileExt;
    let mut offset = 0u64;
    let mut healthy = true;
    let mut group = Vec::new();
    let mut bytes = Vec::new();
    while let Ok(first) = waiting.recv() {
        group.push(first);
        group.extend(waiting.try_iter());
        bytes.clear();
        for (record, _) in &group {
            bytes.extend_from_slice(&(record.len() as u32).to_le_bytes());
            bytes.extend_from_slice(record);
        }
        if offset + bytes.len() as u64 > DURABLE_LOG_BYTES {
            offset = 0;
        }
        healthy = healthy && file.write_all_at(&bytes, offset).is_ok() && file.sync_data().is_ok();
        offset += bytes.len() as u64;
        for (_, done) in group.drain(..) {
            let _ = done.send(healthy);
        }
    }
}

async fn serve_empty(addr: &str, data: &Path, durable: Option<DurableLog>) -> anyhow::Result<()> {
    let paths = DevPaths::new(data);
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            std::fs::read(paths.server_cert())?,
            std::fs::read(paths.server_key())?,
        ))
        .client_ca_root(Certificate::from_pem(std::fs::read(paths.ca_cert())?));
    let service = AccessServer::new(Empty {
        response: typical_response(),
        durable,
    });
    Server::builder()
        .tls_config(tls)?
        .add_service(service)
        .serve_with_shutdown(addr.parse()?, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The load.

/// One connection's system and the requests its callers send, in order.
struct Stream {
    system: String,
    requests: Vec<CheckRequest>,
}

/// Draws a realistic mix from the bundle: for every asset, staff of its owner section and
/// of another section, named grant users and contractors, over common actions, some from
/// unmanaged devices, some with a purpose. Tokens are signed once per person (as an
/// identity provider would issue them) and reused.
fn workload(policies: &Path, paths: &DevPaths) -> anyhow::Result<Vec<Stream>> {
    let loaded = sekimori::policy::load(policies, chrono::Utc::now());
    if !loaded.is_valid() {
        bail!(
            "`{}` is not a valid bundle (run `sekimori policy check`)",
            policies.display()
        );
    }
    let b = &loaded.bundle;
    let key = std::fs::read_to_string(paths.token_key())?;
    let sections: Vec<String> = b.sections().map(|s| s.id.value.clone()).collect();
    if sections.is_empty() {
        bail!("the bundle has no sections");
    }
    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    let mut token = |claims: TokenClaims| -> anyhow::Result<String> {
        let key_id = format!("{}/{:?}/{:?}", claims.sub, claims.section, claims.contract);
        if let Some(t) = tokens.get(&key_id) {
            return Ok(t.clone());
        }
        let t = devpki::sign_token(&key, &claims)?;
        tokens.insert(key_id, t.clone());
        Ok(t)
    };
    let grant_users: Vec<String> = b
        .grants
        .iter()
        .flat_map(|g| g.subjects.users.iter().map(|u| u.value.clone()))
        .collect();
    let actions = ["read", "read", "read", "update", "print", "export"];
    let mut by_system: BTreeMap<String, Vec<CheckRequest>> = BTreeMap::new();
    // At most MAX_ASSETS assets, spread over the whole register: a city-scale bundle still
    // gives a varied load without millions of prepared requests.
    let stride = b.assets.len().div_ceil(MAX_ASSETS).max(1);
    for (i, asset) in b.assets.iter().enumerate().step_by(stride) {
        let Some(system) = asset.systems.first() else {
            continue;
        };
        let owner = asset.owner.value.clone();
        let other = sections[(i * 7 + 3) % sections.len()].clone();
        let amr = |k: usize| -> Vec<String> {
            if k % 3 == 0 {
                vec!["pwd".into()]
            } else {
                vec!["pwd".into(), "fpt".into()]
            }
        };
        let mut subjects = vec![
            TokenClaims {
                sub: format!("e-{owner}-{}", i % 5),
                section: Some(owner.clone()),
                amr: amr(i),
                ttl_secs: 4 * 3600,
                ..TokenClaims::default()
            },
            TokenClaims {
                sub: format!("e-{other}-{}", i % 5),
                section: Some(other),
                amr: amr(i + 1),
                ttl_secs: 4 * 3600,
                ..TokenClaims::default()
            },
        ];
        if !grant_users.is_empty() {
            subjects.push(TokenClaims {
                sub: grant_users[i % grant_users.len()].clone(),
                section: Some(owner.clone()),
                amr: amr(i + 2),
                ttl_secs: 4 * 3600,
                ..TokenClaims::default()
            });
        }
        if let Some(c) = b.contracts.get(i % b.contracts.len().max(1)) {
            subjects.push(TokenClaims {
                sub: format!("x-{}", c.id.value),
                kind: Some("contractor".into()),
                contract: Some(c.id.value.clone()),
                amr: amr(i),
                ttl_secs: 4 * 3600,
                ..TokenClaims::default()
            });
        }
        for (k, claims) in subjects.into_iter().enumerate() {
            let subject_token = token(claims)?;
            for (j, action) in actions.iter().enumerate() {
                let n = i + k + j;
                by_system
                    .entry(system.value.clone())
                    .or_default()
                    .push(CheckRequest {
                        subject_token: subject_token.clone(),
                        asset: asset.id.value.clone(),
                        action: (*action).into(),
                        env: Some(Environment {
                            device_issued: n % 10 != 0,
                            purpose: if n % 2 == 0 {
                                "jumin-kiroku".into()
                            } else {
                                String::new()
                            },
                            break_glass_reason: String::new(),
                        }),
                        request_id: String::new(),
                    });
            }
        }
    }
    Ok(by_system
        .into_iter()
        .map(|(system, requests)| Stream { system, requests })
        .collect())
}

/// Which stream (which system's requests) each connection sends: one system per
/// connection, in order, again from the first when there are more connections than systems.
fn stream_of_each_connection(connections: usize, streams: usize) -> Vec<usize> {
    (0..connections.max(1))
        .map(|c| c % streams.max(1))
        .collect()
}

/// How many different requests the load sends: those of the streams its connections use.
fn distinct_requests_sent(connections: usize, streams: &[Stream]) -> usize {
    let used: BTreeSet<usize> = stream_of_each_connection(connections, streams.len())
        .into_iter()
        .collect();
    used.iter().map(|&s| streams[s].requests.len()).sum()
}

/// Most assets a workload draws requests for.
const MAX_ASSETS: usize = 5_000;

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    allows: u64,
    errors: BTreeMap<String, u64>,
    /// With `--rate`: the calls the schedule made due, and how late each was sent (the
    /// tool behind its schedule, or waiting for a slot under `--concurrency`).
    scheduled: u64,
    late_us: Vec<u32>,
}

impl Tally {
    /// Counts one answered call.
    fn count(&mut self, latency: Duration, answer: Result<bool, String>) {
        match answer {
            Ok(allow) => {
                self.latencies_us.push(micros(latency));
                self.allows += u64::from(allow);
            }
            Err(code) => *self.errors.entry(code).or_default() += 1,
        }
    }

    fn absorb(&mut self, more: Tally) {
        self.latencies_us.extend(more.latencies_us);
        self.late_us.extend(more.late_us);
        self.scheduled += more.scheduled;
        self.allows += more.allows;
        for (k, v) in more.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// The `p` quantile of sorted microseconds, in milliseconds (0 for none).
fn quantile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let at = ((sorted_us.len() as f64 * p) as usize).min(sorted_us.len() - 1);
    f64::from(sorted_us[at]) / 1000.0
}

async fn connect(addr: &str, paths: &DevPaths, system: &str) -> anyhow::Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(paths.ca_cert())?))
        .identity(Identity::from_pem(
            std::fs::read(paths.client_cert(system))?,
            std::fs::read(paths.client_key(system))?,
        ))
        .domain_name("localhost");
    Ok(Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect()
        .await?)
}

/// Sends the load to `addr` for `warmup`, then measures for `duration` (or `requests`).
/// What one target's callers saw over a measured stretch (one run, or the sum of its
/// slices), and what its server spent meanwhile.
#[derive(Default)]
struct Measured {
    tally: Tally,
    seconds: f64,
    cpu: CpuTimes,
    server: Option<ServerFigures>,
    /// This server's CPU while the other target was being measured (interleaved runs):
    /// work it left over, such as the indexer's, done outside its own slices.
    cpu_while_other: Option<u64>,
    /// The calls per second offered on a fixed schedule (`--rate`), if any.
    offered_rps: Option<f64>,
}

impl Measured {
    fn add(&mut self, more: Measured) {
        self.tally.absorb(more.tally);
        self.seconds += more.seconds;
        self.cpu.add(&more.cpu);
        self.server = match (self.server.take(), more.server) {
            (Some(a), Some(b)) => Some(a.plus(&b)),
            (a, b) => a.or(b),
        };
    }

    fn summary(mut self) -> serde_json::Value {
        self.tally.latencies_us.sort_unstable();
        let lat = &self.tally.latencies_us;
        let pct = |p: f64| quantile_ms(lat, p);
        let ok = lat.len() as u64;
        let errors: u64 = self.tally.errors.values().sum();
        let mut result = serde_json::json!({
            "calls": ok + errors,
            "ok": ok,
            "allows": self.tally.allows,
            "seconds": self.seconds,
            "rps": ok as f64 / self.seconds.max(f64::MIN_POSITIVE),
            "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
            "errors": self.tally.errors,
            "cpu_us_per_call": self.cpu.per_call(ok + errors),
        });
        if let Some(rate) = self.offered_rps {
            self.tally.late_us.sort_unstable();
            let late = &self.tally.late_us;
            result["offered_rps"] = serde_json::json!(rate);
            result["scheduled"] = serde_json::json!(self.tally.scheduled);
            result["sent_late_p50_ms"] = serde_json::json!(quantile_ms(late, 0.5));
            result["sent_late_p99_ms"] = serde_json::json!(quantile_ms(late, 0.99));
        }
        if let Some(figures) = &self.server {
            result["log"] = figures.summary(self.seconds);
            result["decision_cache_hit_share"] = serde_json::json!(figures.verdict_hit_share());
            result["handler"] = figures.handler_summary();
        }
        if let Some(ticks) = self.cpu_while_other {
            let hz = rustix::param::clock_ticks_per_second() as f64;
            result["server_cpu_ms_while_other_measured"] =
                serde_json::json!((ticks as f64 * 1000.0 / hz).round());
        }
        result
    }
}

/// What starting a target's server takes.
struct Launch<'a> {
    args: &'a Args,
    /// The run's scratch directory (the servers' standard error goes there).
    work: &'a Path,
    /// The development CA, certificates and keys (`serve --dev --data`).
    data: &'a Path,
    empty_bin: &'a Path,
    server_bin: &'a Path,
    paths: &'a DevPaths,
    streams: &'a Arc<Vec<Stream>>,
}

impl Launch<'_> {
    /// Starts `target`, waits until it answers, opens the connections and sends the
    /// warm-up load (on the schedule of `pace` calls a second, if given).
    async fn start(&self, target: ServerKind, pace: Option<f64>) -> anyhow::Result<Running> {
        let args = self.args;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let metrics = format!("127.0.0.1:{}", free_port()?);
        let log = self.work.join(format!("{}.log", target.key()));
        let data = self.data.display().to_string();
        let empty = || {
            vec![
                "--serve-empty".into(),
                addr.clone(),
                "--data".into(),
                data.clone(),
            ]
        };
        let (program, argv): (&Path, Vec<String>) = match target {
            ServerKind::Empty => (self.empty_bin, empty()),
            ServerKind::DurableEmpty => {
                let file = self.work.join("durable-empty.bin");
                let mut argv = empty();
                argv.extend(["--durable-log".into(), file.display().to_string()]);
                (self.empty_bin, argv)
            }
            ServerKind::Sekimori => (
                self.server_bin,
                vec![
                    "serve".into(),
                    "--dev".into(),
                    "--data".into(),
                    data.clone(),
                    "--policies".into(),
                    args.policies.display().to_string(),
                    "--listen".into(),
                    addr.clone(),
                    "--metrics".into(),
                    metrics.clone(),
                ],
            ),
        };
        let mut child = spawn(args, program, &argv, &log)?;
        wait_ready(&addr, self.paths, &self.streams[0], &mut child, &log).await?;
        let metrics = (target == ServerKind::Sekimori).then_some(metrics);
        let running = Running::open(
            args,
            target,
            &addr,
            metrics,
            child,
            self.paths,
            self.streams,
        )
        .await?;
        load(
            args,
            &running.channels,
            self.streams,
            args.warmup,
            None,
            pace,
        )
        .await?;
        Ok(running)
    }
}

/// A server, started, with its connections open.
struct Running {
    target: ServerKind,
    child: ChildServer,
    /// Its Prometheus listener (sekimori only).
    metrics: Option<String>,
    channels: Vec<(usize, Channel)>,
    reloads: Option<(
        tokio::task::JoinHandle<()>,
        Arc<std::sync::atomic::AtomicU64>,
    )>,
}

impl Running {
    async fn open(
        args: &Args,
        target: ServerKind,
        addr: &str,
        metrics: Option<String>,
        child: ChildServer,
        paths: &DevPaths,
        streams: &[Stream],
    ) -> anyhow::Result<Running> {
        let mut channels = Vec::new();
        for stream in stream_of_each_connection(args.connections, streams.len()) {
            channels.push((stream, connect(addr, paths, &streams[stream].system).await?));
        }
        let reloads = match (args.reload_every, target) {
            (Some(every), ServerKind::Sekimori) => {
                let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
                let task = tokio::spawn(hang_up_every(child.0.id(), every, Arc::clone(&sent)));
                Some((task, sent))
            }
            _ => None,
        };
        Ok(Running {
            target,
            child,
            metrics,
            channels,
            reloads,
        })
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Loads the server for `length` (or, with a budget, until that many calls), measuring;
    /// closed-loop callers, or calls on a fixed schedule of `pace` a second.
    async fn measure(
        &self,
        args: &Args,
        streams: &Arc<Vec<Stream>>,
        length: Duration,
        budget: Option<u64>,
        pace: Option<f64>,
    ) -> anyhow::Result<Measured> {
        let figures_before = match &self.metrics {
            Some(m) => Some(ServerFigures::parse(&scrape(m).await?)),
            None => None,
        };
        let cpu_before = CpuTimes::take(self.pid());
        let started = Instant::now();
        let tally = load(args, &self.channels, streams, length, budget, pace).await?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = CpuTimes::take(self.pid()).since(&cpu_before);
        let server = match (&self.metrics, figures_before) {
            (Some(m), Some(before)) => Some(ServerFigures::parse(&scrape(m).await?).since(&before)),
            _ => None,
        };
        Ok(Measured {
            tally,
            seconds,
            cpu,
            server,
            cpu_while_other: None,
            offered_rps: pace,
        })
    }

    /// The summary of what was measured, with the server's memory; stops the server.
    fn finish(self, measured: Measured) -> serde_json::Value {
        let mut result = measured.summary();
        if let Some((task, sent)) = &self.reloads {
            task.abort();
            result["reloads_requested"] =
                serde_json::json!(sent.load(std::sync::atomic::Ordering::Relaxed));
        }
        if let Some((rss, peak)) = memory_of(self.pid()) {
            result["server_rss_mib"] = serde_json::json!(rss);
            result["server_peak_rss_mib"] = serde_json::json!(peak);
        }
        result
    }
}

/// The load for `length` over `channels`: closed-loop callers (or `budget` calls between
/// them), or with `pace`, calls on a fixed schedule of that many a second.
async fn load(
    args: &Args,
    channels: &[(usize, Channel)],
    streams: &Arc<Vec<Stream>>,
    length: Duration,
    budget: Option<u64>,
    pace: Option<f64>,
) -> anyhow::Result<Tally> {
    match pace {
        Some(rate) => drive_paced(args, channels, streams, length, rate).await,
        None => drive(args, channels, streams, length, budget).await,
    }
}

/// `concurrency` callers over `channels`, each sending its next request when the last is
/// answered, until `length` has passed (or `budget` calls are made between them).
async fn drive(
    args: &Args,
    channels: &[(usize, Channel)],
    streams: &Arc<Vec<Stream>>,
    length: Duration,
    budget: Option<u64>,
) -> anyhow::Result<Tally> {
    let per_task = budget.map(|n| n.div_ceil(args.concurrency.max(1) as u64));
    let deadline = Instant::now() + length;
    let mut tasks = Vec::new();
    for t in 0..args.concurrency.max(1) {
        let (stream, channel) = channels[t % channels.len()].clone();
        let streams = Arc::clone(streams);
        tasks.push(tokio::spawn(async move {
            let mut client = AccessClient::new(channel);
            let reqs = &streams[stream].requests;
            let mut tally = Tally::default();
            let mut i = t * 7919;
            loop {
                let done = match per_task {
                    Some(n) => {
                        tally.latencies_us.len() as u64 + tally.errors.values().sum::<u64>() >= n
                    }
                    None => Instant::now() >= deadline,
                };
                if done {
                    break;
                }
                let req = reqs[i % reqs.len()].clone();
                i += 1;
                let t0 = Instant::now();
                let answer = check(&mut client, req).await;
                tally.count(t0.elapsed(), answer);
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        all.absorb(task.await?);
    }
    Ok(all)
}

/// One `Check`: whether it allowed, or the gRPC status code of its failure.
async fn check(client: &mut AccessClient<Channel>, req: CheckRequest) -> Result<bool, String> {
    match client.check(req).await {
        Ok(resp) => Ok(resp.into_inner().decision.is_some_and(|d| d.allow)),
        Err(status) => Err(format!("{:?}", status.code())),
    }
}

/// `Check` calls on a fixed schedule of `rate` a second over `channels` (an open loop):
/// call `k` goes on connection `k` modulo their number, with that connection's requests in
/// turn, so the same requests are sent as by the closed-loop callers.
async fn drive_paced(
    args: &Args,
    channels: &[(usize, Channel)],
    streams: &Arc<Vec<Stream>>,
    length: Duration,
    rate: f64,
) -> anyhow::Result<Tally> {
    let channels = channels.to_vec();
    let streams = Arc::clone(streams);
    paced(rate, length, args.concurrency, move |k| {
        let (stream, channel) = channels[k as usize % channels.len()].clone();
        let reqs = &streams[stream].requests;
        let req = reqs[(k as usize / channels.len()) % reqs.len()].clone();
        async move { check(&mut AccessClient::new(channel), req).await }
    })
    .await
}

/// How many calls a schedule of `rate` a second makes due in `length`: call `k` is due at
/// `k / rate` seconds, and those due before `length` are made.
fn calls_due(rate: f64, length: Duration) -> u64 {
    (length.as_secs_f64() * rate).ceil() as u64
}

/// Makes `call(k)` for every call due on a schedule of `rate` a second over `length`,
/// whatever the answers (an open loop), at most `cap` in flight, and waits for the last
/// answer. Each latency runs from the call's due time, not from when it was sent: a call
/// sent late (this process behind its schedule, or waiting for a slot) counts the wait, as
/// a system with its own schedule would see it. The schedule is kept by a thread of its own
/// that sleeps to each due time; tokio's timers tick in whole milliseconds.
async fn paced<F, Fut>(rate: f64, length: Duration, cap: usize, call: F) -> anyhow::Result<Tally>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<bool, String>> + Send + 'static,
{
    type Answer = (Duration, Duration, Result<bool, String>);
    let due = calls_due(rate, length);
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel::<Answer>();
    let slots = Arc::new(tokio::sync::Semaphore::new(cap.max(1)));
    let runtime = tokio::runtime::Handle::current();
    let call = Arc::new(call);
    let start = Instant::now();
    std::thread::Builder::new()
        .name("load-schedule".into())
        .spawn(move || {
            for k in 0..due {
                let due_at = start + Duration::from_secs_f64(k as f64 / rate);
                if let Some(wait) = due_at.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let (slots, answers, call) = (slots.clone(), answers.clone(), call.clone());
                runtime.spawn(async move {
                    // The semaphore is never closed, so a slot always comes.
                    let Ok(_slot) = slots.acquire_owned().await else {
                        return;
                    };
                    let late = due_at.elapsed();
                    let answer = call(k).await;
                    let _ = answers.send((due_at.elapsed(), late, answer));
                });
            }
            // `answers` is dropped here; the channel closes once every call has answered.
        })
        .context("starting the schedule's thread")?;
    let mut tally = Tally {
        scheduled: due,
        ..Tally::default()
    };
    while let Some((latency, late, answer)) = answered.recv().await {
        tally.late_us.push(micros(late));
        tally.count(latency, answer);
    }
    Ok(tally)
}

/// An interleaved run's ratio with what sekimori did while the empty handler was measured
/// (its indexer and checkpointer catching up after its slice) charged against it twice:
/// as if that CPU had been spent in sekimori's own slices, slowing it in proportion, and
/// as if the empty handler's slices had had it (they lost it to sekimori). Both assume the
/// cores were saturated, so this errs low. `None` for a run that was not interleaved.
fn charged_ratio(
    ratio: f64,
    sekimori: &serde_json::Value,
    empty: &serde_json::Value,
) -> Option<f64> {
    let leaked_ms = sekimori["server_cpu_ms_while_other_measured"].as_f64()?;
    let cpu_ms = |t: &serde_json::Value, who: &str| {
        t["cpu_us_per_call"][who].as_f64().unwrap_or(0.0) * t["calls"].as_f64().unwrap_or(0.0)
            / 1000.0
    };
    let own = cpu_ms(sekimori, "server");
    let empty_slices = cpu_ms(empty, "server") + cpu_ms(empty, "load_tool");
    if own <= 0.0 || empty_slices <= 0.0 {
        return None;
    }
    Some(ratio * own / (own + leaked_ms) * empty_slices / (empty_slices + leaked_ms))
}

/// With the durable empty handler measured: what the empty handler keeps of its rate once
/// each answer waits for an fsync (the floor), and how near sekimori comes to that floor.
fn add_floor_ratios(summary: &mut serde_json::Map<String, serde_json::Value>) {
    let rps = |key: &str| {
        summary
            .get(key)
            .and_then(|t| t["rps"].as_f64())
            .filter(|r| *r > 0.0)
    };
    let (floor, empty, sekimori) = (rps("durable_empty"), rps("empty"), rps("sekimori"));
    if let (Some(floor), Some(empty)) = (floor, empty) {
        summary.insert(
            "ratio_durable_empty_to_empty".into(),
            serde_json::json!(floor / empty),
        );
    }
    if let (Some(floor), Some(sekimori)) = (floor, sekimori) {
        summary.insert(
            "ratio_sekimori_to_durable_empty".into(),
            serde_json::json!(sekimori / floor),
        );
    }
}

/// The body of `GET /metrics` from the server's Prometheus listener on loopback.
async fn scrape(addr: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the server's metrics at {addr}"))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .context("the server's metrics did not answer within 10 s")??;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!("unexpected answer from the server's metrics at {addr}"),
    }
}

/// A Prometheus histogram as the exporter shows it: cumulative buckets, sum and count.
#[derive(Debug, Default, Clone, PartialEq)]
struct Histogram {
    /// `(upper bound in seconds, observations at most that large)`, in the exporter's
    /// order (ascending, `+Inf` last).
    buckets: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

impl Histogram {
    /// Takes `key value` if `key` is one of the series of the histogram `name{labels}`
    /// (`labels` as the exporter writes them, e.g. `call="check"`, or empty); whether it did.
    fn take(&mut self, name: &str, labels: &str, key: &str, value: f64) -> bool {
        let Some(rest) = key.strip_prefix(name) else {
            return false;
        };
        let (suffix, inner) = match rest.split_once('{') {
            Some((suffix, braced)) => match braced.strip_suffix('}') {
                Some(inner) => (suffix, inner),
                None => return false,
            },
            None => (rest, ""),
        };
        match suffix {
            "_bucket" => {
                // `le` comes last: after the histogram's own labels and a comma, if it has any.
                let le = match inner.strip_prefix(labels) {
                    Some(r) if labels.is_empty() => Some(r),
                    Some(r) => r.strip_prefix(','),
                    None => None,
                };
                let bound = match le.and_then(|r| r.strip_prefix("le=\"")?.strip_suffix('"')) {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(b) => b,
                        Err(_) => return false,
                    },
                    None => return false,
                };
                self.buckets.push((bound, value));
            }
            "_sum" if inner == labels => self.sum = value,
            "_count" if inner == labels => self.count = value,
            _ => return false,
        }
        true
    }

    /// `self + sign × other`, bucket by bucket (on `self`'s bounds).
    fn combined(&self, other: &Histogram, sign: f64) -> Histogram {
        Histogram {
            buckets: self
                .buckets
                .iter()
                .map(|&(b, n)| (b, n + sign * other.within(b).unwrap_or(0.0)))
                .collect(),
            sum: self.sum + sign * other.sum,
            count: self.count + sign * other.count,
        }
    }

    /// Observations at most `bound` seconds, if the histogram has that bound.
    fn within(&self, bound: f64) -> Option<f64> {
        self.buckets
            .iter()
            .find(|(b, _)| *b == bound)
            .map(|(_, n)| *n)
    }

    /// The smallest bucket bound that at least `share` of the observations stayed within,
    /// in ms.
    fn at_most_ms(&self, share: f64) -> Option<f64> {
        self.buckets
            .iter()
            .find(|(b, n)| b.is_finite() && *n >= share * self.count)
            // Whole µs, in ms: the bounds are given in seconds.
            .map(|(b, _)| (b * 1e6).round() / 1e3)
    }

    /// The share of observations over `bound` seconds, if the histogram has that bound.
    fn share_over(&self, bound: f64) -> Option<f64> {
        let n = self.within(bound)?;
        (self.count > 0.0).then(|| 1.0 - n / self.count)
    }

    /// The mean in ms (0 with no observations).
    fn mean_ms(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count * 1000.0
        } else {
            0.0
        }
    }
}

/// The server's own figures in its metrics (cumulative since it started): the decision
/// log's `sekimori_log_commit_seconds` (a histogram) and `sekimori_log_batch_records` (its
/// sum), and how long each caller waited for it (`sekimori_log_wait_seconds`: the queue and
/// its group commit); how many decisions found Casbin's verdict remembered
/// (`sekimori_decision_cache_total`), since that changes what a call costs; and how long
/// its `Check` handler took (`sekimori_check_seconds{call="check"}`), which sets apart
/// the time a call spends in the server's handler, its commit included, from the time in
/// TLS, HTTP/2, the sockets and the load tool.
#[derive(Debug, Default, Clone, PartialEq)]
struct ServerFigures {
    commit: Histogram,
    wait: Histogram,
    records: f64,
    verdicts_remembered: f64,
    verdicts_evaluated: f64,
    check: Histogram,
}

impl ServerFigures {
    fn parse(text: &str) -> ServerFigures {
        let mut f = ServerFigures::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((key, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if f.commit.take("sekimori_log_commit_seconds", "", key, value)
                || f.wait.take("sekimori_log_wait_seconds", "", key, value)
                || f.check
                    .take("sekimori_check_seconds", "call=\"check\"", key, value)
            {
                continue;
            }
            match key {
                "sekimori_log_batch_records_sum" => f.records = value,
                "sekimori_decision_cache_total{result=\"hit\"}" => f.verdicts_remembered = value,
                "sekimori_decision_cache_total{result=\"miss\"}" => f.verdicts_evaluated = value,
                _ => {}
            }
        }
        f
    }

    /// What happened between `before` and `self`.
    fn since(&self, before: &ServerFigures) -> ServerFigures {
        self.combined(before, -1.0)
    }

    /// Two stretches together (the slices of an interleaved run).
    fn plus(&self, more: &ServerFigures) -> ServerFigures {
        self.combined(more, 1.0)
    }

    /// `self + sign × other`.
    fn combined(&self, other: &ServerFigures, sign: f64) -> ServerFigures {
        ServerFigures {
            commit: self.commit.combined(&other.commit, sign),
            wait: self.wait.combined(&other.wait, sign),
            records: self.records + sign * other.records,
            verdicts_remembered: self.verdicts_remembered + sign * other.verdicts_remembered,
            verdicts_evaluated: self.verdicts_evaluated + sign * other.verdicts_evaluated,
            check: self.check.combined(&other.check, sign),
        }
    }

    fn summary(&self, seconds: f64) -> serde_json::Value {
        let commits = self.commit.count;
        let per_commit = |x: f64| if commits > 0.0 { x / commits } else { 0.0 };
        serde_json::json!({
            "commits_per_s": commits / seconds.max(f64::MIN_POSITIVE),
            "records_per_commit": per_commit(self.records),
            "commit_mean_ms": self.commit.mean_ms(),
            "commit_p50_ms_at_most": self.commit.at_most_ms(0.5),
            "commit_p99_ms_at_most": self.commit.at_most_ms(0.99),
            "commits_over_1ms_share": self.commit.share_over(0.001),
            "wait_mean_ms": self.wait.mean_ms(),
            "wait_p50_ms_at_most": self.wait.at_most_ms(0.5),
            "wait_p99_ms_at_most": self.wait.at_most_ms(0.99),
            "waits_over_5ms_share": self.wait.share_over(0.005),
        })
    }

    /// The server's own view of its `Check` calls (`null` where its metrics have no such
    /// figure): how long its handler took, the log's commit included. The rest of what
    /// the callers measured was TLS, HTTP/2, the sockets and the load tool.
    fn handler_summary(&self) -> serde_json::Value {
        serde_json::json!({
            "calls": self.check.count,
            "mean_ms": self.check.mean_ms(),
            "p50_ms_at_most": self.check.at_most_ms(0.5),
            "p90_ms_at_most": self.check.at_most_ms(0.9),
            "p99_ms_at_most": self.check.at_most_ms(0.99),
            "over_5ms_share": self.check.share_over(0.005),
        })
    }

    /// The share of decisions whose Casbin verdict the snapshot remembered.
    fn verdict_hit_share(&self) -> Option<f64> {
        let all = self.verdicts_remembered + self.verdicts_evaluated;
        (all > 0.0).then(|| self.verdicts_remembered / all)
    }
}

/// Sends SIGHUP to `pid` every `every` (with `kill`), counting the signals sent.
async fn hang_up_every(pid: u32, every: Duration, sent: Arc<std::sync::atomic::AtomicU64>) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let signalled = tokio::task::spawn_blocking(move || {
            Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        })
        .await
        .unwrap_or(false);
        if signalled {
            sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A child server process, killed when dropped.
struct ChildServer(Child);

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scratch directory for the run's certificates, decision log and server logs.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> anyhow::Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("sekimori-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(WorkDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Resident and peak resident memory of a process, in MiB (Linux `/proc`; `taskset`
/// execs the server in place, so the pid is the server's either way).
fn memory_of(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let kb: f64 = status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system, in clock ticks) of the server process, of its live threads
/// grouped by thread name, and of this process, from Linux `/proc`: where each call's CPU
/// goes (the tokio workers, the log's writer, indexer and checkpointer) and what the load
/// itself costs. The process's total also holds threads that ended meanwhile.
#[derive(Debug, Default)]
struct CpuTimes {
    server_total: u64,
    server: BTreeMap<String, u64>,
    load_tool: u64,
}

impl CpuTimes {
    fn take(server_pid: u32) -> CpuTimes {
        let mut server = BTreeMap::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{server_pid}/task")) {
            for task in tasks.flatten() {
                if let Some((name, ticks)) = task_ticks(&task.path().join("stat")) {
                    *server.entry(name).or_default() += ticks;
                }
            }
        }
        let server_total =
            task_ticks(&PathBuf::from(format!("/proc/{server_pid}/stat"))).map_or(0, |(_, t)| t);
        let load_tool = task_ticks(Path::new("/proc/self/stat")).map_or(0, |(_, t)| t);
        CpuTimes {
            server_total,
            server,
            load_tool,
        }
    }

    fn since(self, before: &CpuTimes) -> CpuTimes {
        let server = self
            .server
            .into_iter()
            .map(|(name, t)| {
                let was = before.server.get(&name).copied().unwrap_or(0);
                (name, t.saturating_sub(was))
            })
            .collect();
        CpuTimes {
            server_total: self.server_total.saturating_sub(before.server_total),
            server,
            load_tool: self.load_tool.saturating_sub(before.load_tool),
        }
    }

    /// Adds another stretch's CPU (differences, from [`CpuTimes::since`]).
    fn add(&mut self, more: &CpuTimes) {
        self.server_total += more.server_total;
        for (name, t) in &more.server {
            *self.server.entry(name.clone()).or_default() += t;
        }
        self.load_tool += more.load_tool;
    }

    /// Microseconds of CPU per call: the server's in total and by thread name, the load tool's.
    fn per_call(&self, calls: u64) -> serde_json::Value {
        let hz = rustix::param::clock_ticks_per_second() as f64;
        let us = |ticks: u64| -> f64 {
            let v = ticks as f64 * 1e6 / hz / calls.max(1) as f64;
            (v * 10.0).round() / 10.0
        };
        let threads: serde_json::Map<String, serde_json::Value> = self
            .server
            .iter()
            .filter(|(_, t)| **t > 0)
            .map(|(name, t)| (name.clone(), serde_json::json!(us(*t))))
            .collect();
        serde_json::json!({
            "server": us(self.server_total),
            "server_threads": threads,
            "load_tool": us(self.load_tool),
        })
    }
}

/// A thread's (or process's) name and user + system CPU ticks from its `stat` file.
fn task_ticks(stat: &Path) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(stat).ok()?;
    // `pid (name) state ...`: the name may hold spaces and parentheses, so split at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?.to_string();
    let mut fields = text.get(close + 1..)?.split_whitespace();
    // After the name: state is field 3 of stat(5); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((name, utime + stime))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(args: &Args, program: &Path, argv: &[String], log: &Path) -> anyhow::Result<ChildServer> {
    let mut cmd = if args.pin {
        let mut c = Command::new("taskset");
        c.arg("-c").arg("0").arg(program);
        c
    } else {
        Command::new(program)
    };
    let log_file = std::fs::File::create(log)?;
    let child = cmd
        .args(argv)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(ChildServer(child))
}

/// Waits until a Check over TLS gets any gRPC answer.
async fn wait_ready(
    addr: &str,
    paths: &DevPaths,
    stream: &Stream,
    child: &mut ChildServer,
    log: &Path,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Some(status) = child.0.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            bail!("the server exited ({status}) before it was ready:\n{text}");
        }
        if let Ok(channel) = connect(addr, paths, &stream.system).await {
            let mut client = AccessClient::new(channel);
            if let Some(req) = stream.requests.first() {
                if client.check(req.clone()).await.is_ok() {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "the server at {addr} was not ready within 60 s (log: {})",
        log.display()
    )
}

/// What the options cannot say alone.
fn check_args(args: &Args) -> anyhow::Result<()> {
    if args.interleave.is_some() && args.target != Target::Both {
        bail!("--interleave compares the two targets: use it with --target both");
    }
    if let Some(Rate::ShareOfEmpty(_)) = args.rate {
        if !matches!(args.target, Target::Both | Target::All) {
            bail!(
                "--rate with a % offers a share of the empty handler's rate in the same run: \
                 use it with --target both or all, or give calls per second"
            );
        }
    }
    Ok(())
}

/// The rate each target is offered on a fixed schedule, if any: `--rate` in calls per
/// second for all; as a share, the empty handler (measured first) runs closed-loop and
/// the targets after it get that share of its rate.
fn pace_of(rate: Option<Rate>, target: ServerKind, empty_rps: Option<f64>) -> Option<f64> {
    match (rate?, target) {
        (Rate::PerSecond(r), _) => Some(r),
        (Rate::ShareOfEmpty(_), ServerKind::Empty) => None,
        (Rate::ShareOfEmpty(share), _) => empty_rps.map(|rps| share * rps),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    check_args(&args)?;
    let work = WorkDir::new()?;
    let data = work.path().join("data");
    let paths = DevPaths::new(&data);
    // The same development CA, certificates and token key `serve --dev` would make.
    sekimori::cli::service_cmd::dev_init(&data, &args.policies)?;
    let streams = Arc::new(workload(&args.policies, &paths)?);
    if streams.is_empty() {
        bail!("the bundle has no assets held by a system");
    }
    let me = std::env::current_exe()?;
    let server_bin = match &args.server_bin {
        Some(p) => p.clone(),
        None => me.with_file_name("sekimori"),
    };
    let mut summary = serde_json::Map::new();
    summary.insert(
        "load".into(),
        serde_json::json!({
            "concurrency": args.concurrency, "connections": args.connections,
            "duration_s": args.duration.as_secs_f64(), "requests": args.requests,
            "warmup_s": args.warmup.as_secs_f64(), "pinned": args.pin,
            "interleave_s": args.interleave.map(|d| d.as_secs_f64()),
            "rate_per_s": match args.rate { Some(Rate::PerSecond(r)) => Some(r), _ => None },
            "rate_share_of_empty": match args.rate { Some(Rate::ShareOfEmpty(s)) => Some(s), _ => None },
            "distinct_requests": distinct_requests_sent(args.connections, &streams),
            "policies": args.policies.display().to_string(),
        }),
    );
    let targets = args.target.servers();
    let launch = Launch {
        args: &args,
        work: work.path(),
        data: &data,
        empty_bin: &me,
        server_bin: &server_bin,
        paths: &paths,
        streams: &streams,
    };
    match args.interleave {
        None => {
            // One target after the other, each measured for the whole duration.
            let mut empty_rps = None;
            for &target in targets {
                let pace = pace_of(args.rate, target, empty_rps);
                // A share of nothing: the empty handler, measured first, answered no call.
                if matches!(args.rate, Some(Rate::ShareOfEmpty(_)))
                    && target != ServerKind::Empty
                    && !pace.is_some_and(|r| r > 0.0)
                {
                    bail!(
                        "the empty handler answered nothing: there is no rate to take a share of"
                    );
                }
                let running = launch.start(target, pace).await?;
                let measured = running
                    .measure(&args, &streams, args.duration, args.requests, pace)
                    .await?;
                let result = running.finish(measured);
                if target == ServerKind::Empty {
                    empty_rps = result["rps"].as_f64();
                }
                eprintln!("{}: {}", target.key(), result);
                summary.insert(target.key().into(), result);
            }
        }
        Some(slice) => {
            // Both servers up; the duration cut into slices that alternate between them,
            // which goes first alternating too, so both see the host at the same times.
            let mut running = Vec::new();
            for &target in targets {
                running.push(launch.start(target, None).await?);
            }
            let slices = args
                .duration
                .as_nanos()
                .div_ceil(slice.as_nanos().max(1))
                .max(1);
            let length = args.duration / u32::try_from(slices).unwrap_or(u32::MAX);
            let mut measured: Vec<Measured> = running.iter().map(|_| Measured::default()).collect();
            let mut while_other = vec![0u64; running.len()];
            for round in 0..slices {
                for k in 0..running.len() {
                    let i = if round % 2 == 0 {
                        k
                    } else {
                        running.len() - 1 - k
                    };
                    let other = running.len() - 1 - i;
                    let other_before = CpuTimes::take(running[other].pid());
                    let m = running[i]
                        .measure(&args, &streams, length, None, None)
                        .await?;
                    while_other[other] += CpuTimes::take(running[other].pid())
                        .since(&other_before)
                        .server_total;
                    measured[i].add(m);
                }
            }
            for ((run, mut m), idle) in running.into_iter().zip(measured).zip(while_other) {
                m.cpu_while_other = Some(idle);
                let target = run.target;
                let result = run.finish(m);
                eprintln!("{}: {}", target.key(), result);
                summary.insert(target.key().into(), result);
            }
        }
    }
    if let (Some(s), Some(e)) = (summary.get("sekimori"), summary.get("empty")) {
        let ratio = s["rps"].as_f64().unwrap_or(0.0) / e["rps"].as_f64().unwrap_or(f64::MAX);
        // The same comparison in the servers' own CPU per call: the empty handler's over
        // sekimori's. It leaves out the load tool, which shares the cores with both.
        let server_cpu = |t: &serde_json::Value| t["cpu_us_per_call"]["server"].as_f64();
        let cpu_ratio = match (server_cpu(s), server_cpu(e)) {
            (Some(sc), Some(ec)) if sc > 0.0 => Some(ec / sc),
            _ => None,
        };
        let charged = charged_ratio(ratio, s, e);
        summary.insert("ratio_sekimori_to_empty".into(), serde_json::json!(ratio));
        if let Some(charged) = charged {
            summary.insert(
                "ratio_charged_for_work_between_slices".into(),
                serde_json::json!(charged),
            );
        }
        if let Some(r) = cpu_ratio {
            summary.insert(
                "server_cpu_ratio_empty_to_sekimori".into(),
                serde_json::json!(r),
            );
        }
    }
    add_floor_ratios(&mut summary);
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(summary))?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two scrapes of the exporter's text, 400 commits of 3,000 records apart.
    const BEFORE: &str = "# TYPE sekimori_log_commit_seconds histogram
sekimori_log_commit_seconds_bucket{le=\"0.0002\"} 50
sekimori_log_commit_seconds_bucket{le=\"0.001\"} 90
sekimori_log_commit_seconds_bucket{le=\"+Inf\"} 100
sekimori_log_commit_seconds_sum 0.05
sekimori_log_commit_seconds_count 100
sekimori_log_batch_records_sum 700
sekimori_decision_cache_total{result=\"hit\"} 10
sekimori_decision_cache_total{result=\"miss\"} 90
sekimori_log_wait_seconds_bucket{le=\"0.001\"} 60
sekimori_log_wait_seconds_bucket{le=\"0.005\"} 100
sekimori_log_wait_seconds_bucket{le=\"+Inf\"} 100
sekimori_log_wait_seconds_sum 0.1
sekimori_log_wait_seconds_count 100
sekimori_check_seconds_bucket{call=\"check\",le=\"0.001\"} 40
sekimori_check_seconds_bucket{call=\"check\",le=\"0.005\"} 99
sekimori_check_seconds_bucket{call=\"check\",le=\"+Inf\"} 100
sekimori_check_seconds_sum{call=\"check\"} 0.2
sekimori_check_seconds_count{call=\"check\"} 100
sekimori_check_seconds_bucket{call=\"batch_check\",le=\"0.001\"} 7
sekimori_check_seconds_count{call=\"batch_check\"} 7
";
    const AFTER: &str = "sekimori_log_commit_seconds_bucket{le=\"0.0002\"} 250
sekimori_log_commit_seconds_bucket{le=\"0.001\"} 486
sekimori_log_commit_seconds_bucket{le=\"+Inf\"} 500
sekimori_log_commit_seconds_sum 0.25
sekimori_log_commit_seconds_count 500
sekimori_log_batch_records_sum 3700
sekimori_log_batch_records_count 500
sekimori_decision_cache_total{result=\"hit\"} 2710
sekimori_decision_cache_total{result=\"miss\"} 390
sekimori_log_wait_seconds_bucket{le=\"0.001\"} 1860
sekimori_log_wait_seconds_bucket{le=\"0.005\"} 3040
sekimori_log_wait_seconds_bucket{le=\"+Inf\"} 3100
sekimori_log_wait_seconds_sum 4.6
sekimori_log_wait_seconds_count 3100
sekimori_check_seconds_bucket{call=\"check\",le=\"0.001\"} 1540
sekimori_check_seconds_bucket{call=\"check\",le=\"0.005\"} 3069
sekimori_check_seconds_bucket{call=\"check\",le=\"+Inf\"} 3100
sekimori_check_seconds_sum{call=\"check\"} 6.2
sekimori_check_seconds_count{call=\"check\"} 3100
sekimori_check_seconds_bucket{call=\"batch_check\",le=\"0.001\"} 900
sekimori_check_seconds_sum{call=\"batch_check\"} 0.5
sekimori_check_seconds_count{call=\"batch_check\"} 900
";

    /// Asserts that the summary's `key` is the number `want`.
    fn assert_near(v: &serde_json::Value, key: &str, want: f64) {
        let got = v[key].as_f64().unwrap_or(f64::NAN);
        assert!((got - want).abs() < 1e-9, "{key}: {got}, not {want}");
    }

    #[test]
    fn the_log_figures_are_the_difference_of_two_scrapes() {
        let before = ServerFigures::parse(BEFORE);
        assert_eq!(before.commit.count, 100.0);
        assert_eq!(before.commit.buckets.len(), 3, "{before:?}");
        let log = ServerFigures::parse(AFTER).since(&before);
        assert_eq!(
            log.commit.buckets,
            [(0.0002, 200.0), (0.001, 396.0), (f64::INFINITY, 400.0)]
        );
        let v = log.summary(2.0);
        let near = |key: &str, want: f64| assert_near(&v, key, want);
        near("commits_per_s", 200.0);
        near("records_per_commit", 7.5);
        near("commit_mean_ms", 0.5);
        // 200 of 400 within 0.2 ms: the median is at most 0.2 ms; 396 within 1 ms.
        near("commit_p50_ms_at_most", 0.2);
        near("commit_p99_ms_at_most", 1.0);
        near("commits_over_1ms_share", 0.01);
        // 3,000 waits for the log, 4.5 s in all: 1,800 within 1 ms, 2,940 within 5 ms.
        near("wait_mean_ms", 1.5);
        near("wait_p50_ms_at_most", 1.0);
        // 98 % within the last finite bound: the p99 has no bound to give, and none is made up.
        assert_eq!(v["wait_p99_ms_at_most"], serde_json::Value::Null);
        near("waits_over_5ms_share", 0.02);
        // 2,700 of the 3,000 decisions between the scrapes found their verdict remembered.
        assert_eq!(log.verdict_hit_share(), Some(0.9));
        assert_eq!(ServerFigures::default().verdict_hit_share(), None);
    }

    #[test]
    fn the_handlers_own_time_is_read_from_the_check_series_alone() {
        let log = ServerFigures::parse(AFTER).since(&ServerFigures::parse(BEFORE));
        // 3,000 `Check` calls between the scrapes; the `BatchCheck` series is not theirs.
        assert_eq!(
            log.check.buckets,
            [(0.001, 1500.0), (0.005, 2970.0), (f64::INFINITY, 3000.0)]
        );
        let v = log.handler_summary();
        let near = |key: &str, want: f64| assert_near(&v, key, want);
        near("calls", 3000.0);
        near("mean_ms", 2.0);
        // Half within 1 ms; 99 % within 5 ms, and 1 % over it.
        near("p50_ms_at_most", 1.0);
        near("p90_ms_at_most", 5.0);
        near("p99_ms_at_most", 5.0);
        near("over_5ms_share", 0.01);
        // A server without the series: no figures rather than zeros that look measured.
        let none = ServerFigures::parse("sekimori_log_commit_seconds_count 3\n").handler_summary();
        assert_eq!(none["p99_ms_at_most"], serde_json::Value::Null);
        assert_eq!(none["over_5ms_share"], serde_json::Value::Null);
    }

    #[test]
    fn only_the_streams_of_open_connections_count_as_sent() {
        let streams: Vec<Stream> = (0..3)
            .map(|i| Stream {
                system: format!("y{i}"),
                requests: vec![CheckRequest::default(); 10 * (i + 1)],
            })
            .collect();
        assert_eq!(stream_of_each_connection(4, 3), [0, 1, 2, 0]);
        assert_eq!(stream_of_each_connection(0, 3), [0]);
        assert_eq!(distinct_requests_sent(2, &streams), 10 + 20);
        assert_eq!(distinct_requests_sent(4, &streams), 10 + 20 + 30);
        assert_eq!(distinct_requests_sent(1, &streams), 10);
    }

    #[test]
    fn a_scrape_takes_only_a_200_answer() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // A one-shot HTTP server on loopback answering `answer` to one request.
            let serve = |answer: &'static str| async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap().to_string();
                tokio::spawn(async move {
                    let (mut s, _) = listener.accept().await.unwrap();
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    s.write_all(answer.as_bytes()).await.unwrap();
                });
                addr
            };
            let ok = serve("HTTP/1.1 200 OK\r\n\r\nsekimori_log_commit_seconds_count 3\n").await;
            assert_eq!(
                ServerFigures::parse(&scrape(&ok).await.unwrap())
                    .commit
                    .count,
                3.0
            );
            let failing = serve("HTTP/1.1 500 Internal Server Error\r\n\r\noops").await;
            assert!(scrape(&failing).await.is_err());
            let garbage = serve("not http at all").await;
            assert!(scrape(&garbage).await.is_err());
            // Nothing listening: the port of a listener just closed.
            let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = closed.local_addr().unwrap().to_string();
            drop(closed);
            assert!(scrape(&addr).await.is_err());
        });
    }

    #[test]
    fn interleaving_refuses_a_call_budget_and_reloads() {
        let parse = |extra: &[&str]| {
            Args::try_parse_from(["sekimori-load", "--interleave", "1s"].iter().chain(extra))
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--requests", "100"]).is_err());
        assert!(parse(&["--reload-every", "3s"]).is_err());
    }

    #[test]
    fn a_rate_is_calls_per_second_or_a_share_of_the_empty_handlers() {
        assert_eq!(parse_rate("6000"), Ok(Rate::PerSecond(6000.0)));
        assert_eq!(parse_rate("2500.5"), Ok(Rate::PerSecond(2500.5)));
        assert_eq!(parse_rate("50%"), Ok(Rate::ShareOfEmpty(0.5)));
        for bad in [
            "", "%", "0", "0%", "-5", "-50%", "fast", "50 %x", "inf", "NaN",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} was taken as a rate");
        }
        let args = |extra: &[&str]| Args::try_parse_from(["sekimori-load"].iter().chain(extra));
        // An open loop has no budget of calls, and its slices would each start a schedule.
        assert!(args(&["--rate", "100", "--requests", "10"]).is_err());
        assert!(args(&["--rate", "100", "--interleave", "1s"]).is_err());
        // A share needs the empty handler measured first in the same run.
        let checked = |extra: &[&str]| check_args(&args(extra).unwrap());
        assert!(checked(&["--rate", "50%"]).is_ok());
        assert!(checked(&["--rate", "50%", "--target", "all"]).is_ok());
        assert!(checked(&["--rate", "50%", "--target", "sekimori"]).is_err());
        assert!(checked(&["--rate", "50%", "--target", "durable-empty"]).is_err());
        assert!(checked(&["--rate", "3000", "--target", "sekimori"]).is_ok());
    }

    #[test]
    fn a_share_of_the_empty_handlers_rate_is_offered_to_the_targets_after_it() {
        let share = Some(Rate::ShareOfEmpty(0.5));
        // The empty handler itself runs closed-loop: its rate is what is shared.
        assert_eq!(pace_of(share, ServerKind::Empty, None), None);
        assert_eq!(
            pace_of(share, ServerKind::Sekimori, Some(14_000.0)),
            Some(7_000.0)
        );
        assert_eq!(
            pace_of(share, ServerKind::DurableEmpty, Some(14_000.0)),
            Some(7_000.0)
        );
        // Not measured yet: no rate to share.
        assert_eq!(pace_of(share, ServerKind::Sekimori, None), None);
        let fixed = Some(Rate::PerSecond(3_000.0));
        for target in [
            ServerKind::Empty,
            ServerKind::DurableEmpty,
            ServerKind::Sekimori,
        ] {
            assert_eq!(pace_of(fixed, target, Some(14_000.0)), Some(3_000.0));
            assert_eq!(pace_of(None, target, Some(14_000.0)), None);
        }
    }

    #[test]
    fn a_schedule_makes_due_the_calls_before_its_end() {
        assert_eq!(calls_due(1000.0, Duration::from_secs(2)), 2000);
        // Due at 0, 1/3 and 2/3 of a second: three before the end of one second.
        assert_eq!(calls_due(3.0, Duration::from_secs(1)), 3);
        assert_eq!(calls_due(2.5, Duration::from_secs(1)), 3);
        assert_eq!(calls_due(100.0, Duration::ZERO), 0);
    }

    #[tokio::test]
    async fn every_call_due_is_made_whatever_the_answers() {
        // Half the calls fail: the schedule goes on regardless, and each outcome is counted.
        let tally = paced(400.0, Duration::from_millis(250), 8, |k| async move {
            if k % 2 == 0 {
                Ok(k % 4 == 0)
            } else {
                Err(String::from("Unavailable"))
            }
        })
        .await
        .unwrap();
        assert_eq!(tally.scheduled, 100);
        assert_eq!(tally.latencies_us.len(), 50);
        assert_eq!(tally.allows, 25);
        assert_eq!(tally.errors.get("Unavailable"), Some(&50));
        assert_eq!(tally.late_us.len(), 100);
    }

    #[tokio::test]
    async fn a_call_that_waits_for_a_slot_counts_its_wait() {
        // One slot, 20 calls due 5 ms apart, each answered after 20 ms: the server keeps up
        // with a quarter of the schedule. Closed-loop timing would report 20 ms for every
        // call; from its due time, the last waited for the 19 before it.
        let tally = paced(200.0, Duration::from_millis(100), 1, |_| async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(true)
        })
        .await
        .unwrap();
        assert_eq!(tally.scheduled, 20);
        assert_eq!(tally.latencies_us.len(), 20);
        let longest = *tally.latencies_us.iter().max().unwrap();
        // The last call is due at 95 ms and answered no sooner than 20 × 20 ms = 400 ms.
        assert!(longest >= 300_000, "the longest latency was {longest} µs");
        assert!(*tally.late_us.iter().max().unwrap() >= 280_000);
        let shortest = *tally.latencies_us.iter().min().unwrap();
        assert!(shortest >= 20_000, "a call answered in {shortest} µs");
    }

    #[test]
    fn the_durable_empty_handler_is_a_target_of_its_own_and_its_log_is_internal() {
        let parse = |args: &[&str]| Args::try_parse_from(["sekimori-load"].iter().chain(args));
        assert_eq!(parse(&["--target", "all"]).unwrap().target, Target::All);
        // Measured between the two it is the floor for.
        assert_eq!(
            Target::All.servers(),
            [
                ServerKind::Empty,
                ServerKind::DurableEmpty,
                ServerKind::Sekimori
            ]
        );
        assert_eq!(
            parse(&["--target", "durable-empty"]).unwrap().target,
            Target::DurableEmpty
        );
        // The file is the tool's own business: only with `--serve-empty`.
        assert!(parse(&["--durable-log", "x.bin"]).is_err());
    }

    #[test]
    fn the_floor_ratios_need_the_durable_empty_handler_and_a_rate() {
        let target = |rps: f64| serde_json::json!({ "rps": rps });
        let mut all = serde_json::Map::new();
        all.insert("empty".into(), target(40_000.0));
        all.insert("durable_empty".into(), target(24_000.0));
        all.insert("sekimori".into(), target(18_000.0));
        add_floor_ratios(&mut all);
        assert_eq!(all["ratio_durable_empty_to_empty"], serde_json::json!(0.6));
        assert_eq!(
            all["ratio_sekimori_to_durable_empty"],
            serde_json::json!(0.75)
        );
        // Without the floor, or with a floor that answered nothing: no ratio to it.
        let mut both = serde_json::Map::new();
        both.insert("empty".into(), target(40_000.0));
        both.insert("sekimori".into(), target(18_000.0));
        let mut failed = both.clone();
        failed.insert("durable_empty".into(), target(0.0));
        for mut summary in [both, failed] {
            add_floor_ratios(&mut summary);
            assert!(!summary.contains_key("ratio_durable_empty_to_empty"));
            assert!(!summary.contains_key("ratio_sekimori_to_durable_empty"));
        }
    }

    #[test]
    fn work_sekimori_did_between_its_slices_is_charged_against_it() {
        // sekimori: 1,000 calls at 100 µs (100 ms), then 25 ms while the empty handler
        // ran; the empty handler's slices: 2,000 calls at 30 µs of server and 20 µs of
        // load-tool CPU (100 ms).
        let sekimori = serde_json::json!({
            "calls": 1000, "cpu_us_per_call": {"server": 100.0},
            "server_cpu_ms_while_other_measured": 25.0,
        });
        let empty = serde_json::json!({
            "calls": 2000, "cpu_us_per_call": {"server": 30.0, "load_tool": 20.0},
        });
        let charged = charged_ratio(0.5, &sekimori, &empty).unwrap();
        assert!(
            (charged - 0.5 * (100.0 / 125.0) * (100.0 / 125.0)).abs() < 1e-9,
            "{charged}"
        );
        // A run one target after the other has nothing to charge.
        let sequential = serde_json::json!({"calls": 1000, "cpu_us_per_call": {"server": 100.0}});
        assert_eq!(charged_ratio(0.5, &sequential, &empty), None);
    }

    #[test]
    fn a_scrape_without_the_log_metrics_reports_no_commits() {
        let log = ServerFigures::parse("garbage\nsekimori_log_commit_seconds_count x\n");
        assert_eq!(log, ServerFigures::default());
        let v = log.summary(1.0);
        assert_eq!(v["commit_mean_ms"], serde_json::json!(0.0));
        assert_eq!(v["commit_p50_ms_at_most"], serde_json::Value::Null);
        assert_eq!(v["commits_over_1ms_share"], serde_json::Value::Null);
    }

    #[test]
    fn a_thread_name_with_spaces_and_parentheses_is_read_whole() {
        let dir = std::env::temp_dir().join(format!("sekimori-load-stat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stat = dir.join("stat");
        // stat(5): pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime ...
        std::fs::write(
            &stat,
            "4242 (odd (name) x) S 1 2 3 4 5 6 7 8 9 10 1234 56 0 0 20 0\n",
        )
        .unwrap();
        assert_eq!(
            task_ticks(&stat),
            Some((String::from("odd (name) x"), 1290))
        );
        std::fs::write(&stat, "4242 (cut short) S 1 2").unwrap();
        assert_eq!(
            task_ticks(&stat),
            None,
            "a stat line without the CPU fields"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cpu_per_call_is_the_difference_spread_over_the_calls() {
        let hz = rustix::param::clock_ticks_per_second();
        let before = CpuTimes {
            server_total: 1_000,
            server: BTreeMap::from([("worker".into(), 100), ("writer".into(), 10)]),
            load_tool: 50,
        };
        // The process's total also holds a thread that ended (one second).
        let after = CpuTimes {
            server_total: 1_000 + 6 * hz,
            server: BTreeMap::from([
                ("worker".into(), 100 + 3 * hz),
                ("writer".into(), 10 + hz),
                ("started later".into(), hz),
            ]),
            load_tool: 50 + 2 * hz,
        };
        // One second of CPU is 1,000,000 µs: over 100,000 calls, 10 µs a call.
        let v = after.since(&before).per_call(100_000);
        assert_eq!(v["server"], serde_json::json!(60.0));
        assert_eq!(v["server_threads"]["worker"], serde_json::json!(30.0));
        assert_eq!(v["server_threads"]["writer"], serde_json::json!(10.0));
        assert_eq!(
            v["server_threads"]["started later"],
            serde_json::json!(10.0)
        );
        assert_eq!(v["load_tool"], serde_json::json!(20.0));
    }

    #[test]
    fn the_threads_of_a_process_are_summed_and_an_unknown_pid_has_none() {
        let pid = std::process::id();
        let before = CpuTimes::take(pid);
        // Burn CPU in this thread until its thread and its process (read both ways: the
        // process's own stat and the sum of its threads') show three more clock ticks.
        let started = Instant::now();
        let mut x = 0u64;
        let mut spent = CpuTimes::default();
        while spent.server_total < 3
            || spent.server.values().sum::<u64>() < 3
            || spent.load_tool < 3
        {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no CPU time seen: {spent:?}"
            );
            spent = CpuTimes::take(pid).since(&before);
        }
        // Found thread by thread as well.
        assert!(!spent.server.is_empty());
        assert!(CpuTimes::take(u32::MAX).server.is_empty());
    }

    /// The records at the start of a durable empty handler's file, as the writer framed
    /// them (a little-endian length, then the bytes), up to the first zero length.
    fn framed_records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        let mut at = 0;
        while at + 4 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            if len == 0 {
                break;
            }
            records.push(bytes[at + 4..at + 4 + len].to_vec());
            at += 4 + len;
        }
        records
    }

    #[tokio::test]
    async fn the_durable_empty_handler_answers_once_its_records_are_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("durable.bin");
        let log = DurableLog::open(&path).unwrap();
        let (a, b, c) = tokio::join!(
            log.append(b"first".to_vec()),
            log.append(b"second".to_vec()),
            log.append(b"third".to_vec())
        );
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        let bytes = std::fs::read(&path).unwrap();
        // Preallocated, and not grown by the commits.
        assert_eq!(bytes.len() as u64, DURABLE_LOG_BYTES);
        let mut records = framed_records(&bytes);
        records.sort();
        assert_eq!(
            records,
            [b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
        );
    }

    /// Runs the writer over `file` on its own thread, sends each record after the last was
    /// answered (one group each), and returns the answers.
    fn write_one_by_one(file: std::fs::File, records: Vec<Vec<u8>>) -> Vec<bool> {
        let (queue, waiting) = std::sync::mpsc::channel();
        let writer = std::thread::spawn(move || write_groups(&file, &waiting));
        let answers = records
            .into_iter()
            .map(|record| {
                let (done, written) = tokio::sync::oneshot::channel();
                queue.send((record, done)).unwrap();
                written.blocking_recv().unwrap()
            })
            .collect();
        drop(queue);
        writer.join().unwrap();
        answers
    }

    #[test]
    fn the_durable_empty_handler_rewrites_its_file_from_the_start_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("durable.bin");
        drop(DurableLog::open(&path).unwrap());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let big = (DURABLE_LOG_BYTES as usize) * 5 / 8;
        let answers = write_one_by_one(file, vec![vec![0xaa; big], vec![0xbb; big]]);
        assert_eq!(answers, [true, true]);
        let bytes = std::fs::read(&path).unwrap();
        // The second record did not fit after the first: it went to the start, over it.
        assert_eq!(bytes.len() as u64, DURABLE_LOG_BYTES);
        assert_eq!(framed_records(&bytes[..big + 4]), [vec![0xbb; big]]);
    }

    #[test]
    fn the_durable_empty_handler_refuses_a_call_whose_record_it_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("durable.bin");
        std::fs::write(&path, b"").unwrap();
        // Opened for reading only: every write fails, as on a disk gone read-only.
        let file = std::fs::File::open(&path).unwrap();
        let answers = write_one_by_one(file, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(answers, [false, false]);
    }
}
