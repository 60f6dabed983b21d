//! The service configuration: a TOML file → a validated [`Config`].
//!
//! Unknown keys are errors; every problem is reported at once with its key path; paths
//! are relative to the config file; durations are humane (`"30s"`, `"500ms"`, `"2m"`).
//! Nothing is opened or bound here: start-up checks files later and says which one failed.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    policy_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    shutdown_grace: Option<String>,
    tls: RawTls,
    tokens: RawTokens,
    log: RawLog,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
    enabled: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    path: Option<PathBuf>,
    checkpoint_key: PathBuf,
    checkpoint_every: Option<u64>,
    checkpoint_interval: Option<String>,
    retention: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    jwks_file: PathBuf,
    issuer: String,
    audience: String,
    leeway: Option<String>,
    max_bytes: Option<usize>,
    #[serde(default)]
    claims: ClaimNames,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_message_bytes: Option<usize>,
    max_batch: Option<usize>,
    max_concurrent_requests: Option<usize>,
    request_timeout: Option<String>,
    verdict_cache: Option<usize>,
}

/// Claim names in subject tokens (SPEC §5 defaults).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    pub sub: String,
    pub section: String,
    pub kind: String,
    pub contract: String,
    pub roles: String,
    pub amr: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            sub: "sub".into(),
            section: "section".into(),
            kind: "kind".into(),
            contract: "contract".into(),
            roles: "roles".into(),
            amr: "amr".into(),
        }
    }
}

/// TLS material: the server's certificate and key, and the CA client certificates must
/// chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    pub jwks_file: PathBuf,
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    pub max_bytes: usize,
    pub claims: ClaimNames,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_batch: usize,
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
    /// Casbin verdicts each policy snapshot remembers (`engine::verdicts`); 0: none.
    pub verdict_cache: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 * 1024 * 1024,
            max_batch: 1000,
            max_concurrent_requests: 1024,
            request_timeout: Duration::from_secs(5),
            verdict_cache: crate::engine::verdicts::CAPACITY,
        }
    }
}

/// The decision log: where, and the key that signs its checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub path: PathBuf,
    /// Ed25519 private key (PKCS#8 PEM).
    pub checkpoint_key: PathBuf,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    /// How long records stay in the store before `audit archive` moves them out; `None`
    /// keeps everything.
    pub retention: Option<Duration>,
}

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub policy_dir: PathBuf,
    pub data_dir: PathBuf,
    pub shutdown_grace: Duration,
    pub tls: TlsFiles,
    pub tokens: TokenConfig,
    pub log: LogConfig,
    pub limits: Limits,
    /// Where Prometheus metrics are served (plain HTTP; loopback by default); `None`: off.
    pub metrics: Option<SocketAddr>,
}

pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7443";
/// Largest batch the API accepts (SPEC §9).
pub const MAX_BATCH: usize = 1000;
/// Most verdicts a snapshot may be told to remember: about 600 MiB, per snapshot.
pub const MAX_VERDICT_CACHE: usize = 4 * 1024 * 1024;

/// Parses `"500ms"`, `"30s"`, `"2m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = text.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86_400).map(Duration::from_secs),
        _ => None,
    }
}

/// Every key the file may hold, by section.
const KNOWN: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "listen",
            "policy_dir",
            "data_dir",
            "shutdown_grace",
            "tls",
            "tokens",
            "log",
            "limits",
            "metrics",
        ],
    ),
    ("tls", &["cert", "key", "client_ca"]),
    (
        "tokens",
        &[
            "jwks_file",
            "issuer",
            "audience",
            "leeway",
            "max_bytes",
            "claims",
        ],
    ),
    (
        "tokens.claims",
        &["sub", "section", "kind", "contract", "roles", "amr"],
    ),
    (
        "log",
        &[
            "path",
            "checkpoint_key",
            "checkpoint_every",
            "checkpoint_interval",
            "retention",
        ],
    ),
    (
        "limits",
        &[
            "max_message_bytes",
            "max_batch",
            "max_concurrent_requests",
            "request_timeout",
            "verdict_cache",
        ],
    ),
    ("metrics", &["listen", "enabled"]),
];

fn unknown_keys(root: &toml::Table) -> Vec<String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        let known = KNOWN.iter().find(|(p, _)| *p == prefix).map(|(_, k)| *k);
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match known {
                Some(k) if k.contains(&key.as_str()) => {
                    if let toml::Value::Table(t) = value {
                        walk(&path, t, out);
                    }
                }
                Some(k) => out.push(format!(
                    "`{path}`: unknown key (allowed here: {})",
                    k.join(", ")
                )),
                None => {}
            }
        }
    }
    let mut out = Vec::new();
    walk("", root, &mut out);
    out
}

impl Config {
    /// Reads and validates a config file; every problem is listed in one error.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, base).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, String> {
        // Unknown keys first, all of them with their paths (serde stops at the first).
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let unknown = unknown_keys(&table);
        if !unknown.is_empty() {
            return Err(unknown.join("; "));
        }
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut problems = Vec::new();
        let rel = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut duration = |key: &str, v: Option<&String>, default: Duration| match v {
            None => default,
            Some(t) => parse_duration(t).unwrap_or_else(|| {
                problems.push(format!(
                    "`{key}`: `{t}` is not a duration (e.g. \"500ms\", \"30s\", \"2m\")"
                ));
                default
            }),
        };
        let shutdown_grace = duration(
            "shutdown_grace",
            raw.shutdown_grace.as_ref(),
            Duration::from_secs(10),
        );
        let leeway = duration(
            "tokens.leeway",
            raw.tokens.leeway.as_ref(),
            Duration::from_secs(30),
        );
        let defaults = Limits::default();
        let request_timeout = duration(
            "limits.request_timeout",
            raw.limits.request_timeout.as_ref(),
            defaults.request_timeout,
        );
        let checkpoint_interval = duration(
            "log.checkpoint_interval",
            raw.log.checkpoint_interval.as_ref(),
            Duration::from_secs(60),
        );
        let retention = match raw.log.retention.as_deref() {
            None => None,
            Some(t) => match parse_duration(t) {
                Some(d) => Some(d),
                None => {
                    problems.push(format!(
                        "`log.retention`: `{t}` is not a duration (e.g. \"1826d\")"
                    ));
                    None
                }
            },
        };
        let metrics_text = raw
            .metrics
            .listen
            .clone()
            .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.to_string());
        let metrics = match metrics_text.parse::<SocketAddr>() {
            Ok(a) => raw.metrics.enabled.unwrap_or(true).then_some(a),
            Err(_) => {
                problems.push(format!(
                    "`metrics.listen`: `{metrics_text}` is not an address like 127.0.0.1:9464"
                ));
                None
            }
        };
        let listen_text = raw
            .listen
            .clone()
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_text.parse::<SocketAddr>().unwrap_or_else(|_| {
            problems.push(format!(
                "`listen`: `{listen_text}` is not an address like 127.0.0.1:7443"
            ));
            SocketAddr::from(([127, 0, 0, 1], 7443))
        });
        let max_batch = raw.limits.max_batch.unwrap_or(MAX_BATCH);
        if max_batch == 0 || max_batch > MAX_BATCH {
            problems.push(format!(
                "`limits.max_batch`: {max_batch} is outside 1..={MAX_BATCH}"
            ));
        }
        let verdict_cache = raw.limits.verdict_cache.unwrap_or(defaults.verdict_cache);
        if verdict_cache > MAX_VERDICT_CACHE {
            problems.push(format!(
                "`limits.verdict_cache`: {verdict_cache} is outside 0..={MAX_VERDICT_CACHE} (each verdict takes about 150 bytes, twice while a reload compiles)"
            ));
        }
        let max_bytes = raw.tokens.max_bytes.unwrap_or(16 * 1024);
        if !(256..=1024 * 1024).contains(&max_bytes) {
            problems.push(format!(
                "`tokens.max_bytes`: {max_bytes} is outside 256..=1048576"
            ));
        }
        if raw.tokens.issuer.trim().is_empty() {
            problems.push(String::from("`tokens.issuer` is empty"));
        }
        if raw.tokens.audience.trim().is_empty() {
            problems.push(String::from("`tokens.audience` is empty"));
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let data_dir = rel(&raw.data_dir.unwrap_or_else(|| PathBuf::from("data")));
        Ok(Config {
            listen,
            policy_dir: rel(&raw.policy_dir.unwrap_or_else(|| PathBuf::from("policies"))),
            log: LogConfig {
                path: raw
                    .log
                    .path
                    .map_or_else(|| data_dir.join("decisions.db"), |p| rel(&p)),
                checkpoint_key: rel(&raw.log.checkpoint_key),
                checkpoint_every: raw.log.checkpoint_every.unwrap_or(10_000).max(1),
                checkpoint_interval,
                retention,
            },
            data_dir,
            shutdown_grace,
            tls: TlsFiles {
                cert: rel(&raw.tls.cert),
                key: rel(&raw.tls.key),
                client_ca: rel(&raw.tls.client_ca),
            },
            tokens: TokenConfig {
                jwks_file: rel(&raw.tokens.jwks_file),
                issuer: raw.tokens.issuer,
                audience: raw.tokens.audience,
                leeway,
                max_bytes,
                claims: raw.tokens.claims,
            },
            metrics,
            limits: Limits {
                max_message_bytes: raw
                    .limits
                    .max_message_bytes
                    .unwrap_or(defaults.max_message_bytes),
                max_batch,
                max_concurrent_requests: raw
                    .limits
                    .max_concurrent_requests
                    .unwrap_or(defaults.max_concurrent_requests)
                    .max(1),
                request_timeout,
                verdict_cache,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[tls]
cert = "tls/server.pem"
key = "tls/server.key"
client_ca = "tls/ca.pem"
[tokens]
jwks_file = "jwks.json"
issuer = "https://idp.koganei.city"
audience = "sekimori"
[log]
checkpoint_key = "keys/checkpoint.pem"
"#;

    #[test]
    fn defaults_and_relative_paths() {
        let c = Config::parse(MINIMAL, Path::new("/etc/sekimori")).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.tls.cert, PathBuf::from("/etc/sekimori/tls/server.pem"));
        assert_eq!(c.tokens.leeway, Duration::from_secs(30));
        assert_eq!(c.limits.max_batch, 1000);
        assert_eq!(c.limits.verdict_cache, 32_768);
        assert_eq!(c.tokens.claims, ClaimNames::default());
        assert_eq!(c.log.path, PathBuf::from("/etc/sekimori/data/decisions.db"));
        assert_eq!(c.log.checkpoint_every, 10_000);
    }

    #[test]
    fn unknown_keys_are_errors_all_at_once_with_their_paths() {
        let text = format!("lisen = \"x\"\n{MINIMAL}\n[limits]\nmax_bach = 3\n")
            .replace("[tokens]", "[tokens]\nisuer = \"y\"");
        let e = Config::parse(&text, Path::new(".")).unwrap_err();
        for path in ["`lisen`", "`tokens.isuer`", "`limits.max_bach`"] {
            assert!(e.contains(path), "{path} missing in: {e}");
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = format!(
            "listen = \"nowhere\"\nshutdown_grace = \"soon\"\n{MINIMAL}\n[limits]\nmax_batch = 5000\nverdict_cache = 99999999\n"
        );
        let e = Config::parse(&text, Path::new(".")).unwrap_err();
        for key in [
            "`listen`",
            "`shutdown_grace`",
            "`limits.max_batch`",
            "`limits.verdict_cache`",
        ] {
            assert!(e.contains(key), "{key} missing in: {e}");
        }
    }

    #[test]
    fn the_verdict_cache_can_be_sized_or_turned_off() {
        for (value, want) in [("0", 0), ("200000", 200_000)] {
            let text = format!("{MINIMAL}\n[limits]\nverdict_cache = {value}\n");
            let c = Config::parse(&text, Path::new(".")).unwrap();
            assert_eq!(c.limits.verdict_cache, want);
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("2 days"), None);
        assert_eq!(parse_duration("s"), None);
    }
}
