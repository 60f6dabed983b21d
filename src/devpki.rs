//! Development key material for `serve --dev`: a CA, a localhost server certificate, one
//! client certificate per registered system, an operator certificate, and an Ed25519 token
//! signing key with its JWKS. Generated once under `<data>/dev/`; never for production
//! (without `--dev`, missing material is an error at start).

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};
use time::{Duration as TimeDuration, OffsetDateTime};

fn days(n: i64) -> TimeDuration {
    TimeDuration::days(n)
}

#[derive(Debug, thiserror::Error)]
pub enum DevPkiError {
    #[error("cannot write development material under `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate a development certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where the development material lives.
#[derive(Debug, Clone)]
pub struct DevPaths {
    pub dir: PathBuf,
}

pub const DEV_ISSUER: &str = "https://idp.sekimori.dev";
pub const DEV_AUDIENCE: &str = "sekimori";
pub const DEV_KID: &str = "dev-1";
pub const OPERATOR_IDENTITY: &str = "spiffe://sekimori.dev/operator";

impl DevPaths {
    pub fn new(data_dir: &Path) -> Self {
        DevPaths {
            dir: data_dir.join("dev"),
        }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server-key.pem")
    }
    pub fn client_cert(&self, system: &str) -> PathBuf {
        self.dir.join("clients").join(format!("{system}.pem"))
    }
    pub fn client_key(&self, system: &str) -> PathBuf {
        self.dir.join("clients").join(format!("{system}-key.pem"))
    }
    pub fn operator_cert(&self) -> PathBuf {
        self.dir.join("operator.pem")
    }
    pub fn operator_key(&self) -> PathBuf {
        self.dir.join("operator-key.pem")
    }
    pub fn token_key(&self) -> PathBuf {
        self.dir.join("token-signing-key.pem")
    }
    pub fn jwks(&self) -> PathBuf {
        self.dir.join("jwks.json")
    }
    pub fn checkpoint_key(&self) -> PathBuf {
        self.dir.join("checkpoint-signing-key.pem")
    }
    /// The checkpoint public key, for `audit verify --public-key`.
    pub fn checkpoint_public_key(&self) -> PathBuf {
        self.dir.join("checkpoint-key.pub")
    }
}

fn write(path: &Path, text: &str) -> Result<(), DevPkiError> {
    let io = |source| DevPkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, text).map_err(io)?;
    #[cfg(unix)]
    if path.to_string_lossy().ends_with("key.pem") {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    Ok(())
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        "sekimori development CA (not for production)",
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - days(1);
    p.not_after = now + days(3650);
    Ok(p)
}

/// A development certificate authority able to issue more certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// Validity of an issued certificate, relative to now (for tests of expired ones).
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub from_days: i64,
    pub until_days: i64,
}

impl Default for Validity {
    fn default() -> Self {
        Validity {
            from_days: -1,
            until_days: 825,
        }
    }
}

impl DevCa {
    /// A new CA (key and self-signed certificate).
    pub fn generate() -> Result<DevCa, rcgen::Error> {
        let key = KeyPair::generate()?;
        let params = ca_params()?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    fn load(paths: &DevPaths) -> Option<DevCa> {
        let cert_pem = std::fs::read_to_string(paths.ca_cert()).ok()?;
        let key_pem = std::fs::read_to_string(paths.ca_key()).ok()?;
        DevCa::from_pem(&cert_pem, &key_pem)
    }

    /// A CA made by [`DevCa::generate`], from its certificate and key. Certificates it
    /// issues chain to the original (same name, same key).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Option<DevCa> {
        let key = KeyPair::from_pem(key_pem).ok()?;
        Some(DevCa {
            issuer: Issuer::new(ca_params().ok()?, key),
            cert_pem: cert_pem.to_string(),
        })
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate; returns (certificate PEM, key PEM).
    pub fn issue(
        &self,
        common_name: &str,
        sans: &[String],
        server: bool,
        validity: Validity,
    ) -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        p.distinguished_name = dn;
        for san in sans {
            if let Ok(ip) = san.parse::<std::net::IpAddr>() {
                p.subject_alt_names.push(SanType::IpAddress(ip));
            } else if san.contains("://") {
                p.subject_alt_names
                    .push(SanType::URI(san.as_str().try_into()?));
            } else {
                p.subject_alt_names
                    .push(SanType::DnsName(san.as_str().try_into()?));
            }
        }
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let now = OffsetDateTime::now_utc();
        p.not_before = now + days(validity.from_days);
        p.not_after = now + days(validity.until_days);
        let cert = p.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Ensures the development material exists: the CA, server, operator and signing key are
/// made once; a client certificate is made for every system that lacks one. Returns
/// whether anything was created.
pub fn ensure(paths: &DevPaths, systems: &[(String, String)]) -> Result<bool, DevPkiError> {
    let mut created = false;
    let ca = match DevCa::load(paths) {
        Some(ca) => ca,
        None => {
            let ca = DevCa::generate()?;
            write(&paths.ca_cert(), &ca.cert_pem)?;
            write(&paths.ca_key(), &ca.key_pem())?;
            created = true;
            ca
        }
    };
    if !paths.server_cert().exists() || !paths.server_key().exists() {
        let sans = [
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let (cert, key) = ca.issue("sekimori (development)", &sans, true, Validity::default())?;
        write(&paths.server_cert(), &cert)?;
        write(&paths.server_key(), &key)?;
        created = true;
    }
    if !paths.operator_cert().exists() {
        let (cert, key) = ca.issue(
            "sekimori operator (development)",
            &[OPERATOR_IDENTITY.to_string()],
            false,
            Validity::default(),
        )?;
        write(&paths.operator_cert(), &cert)?;
        write(&paths.operator_key(), &key)?;
        created = true;
    }
    for (id, identity) in systems {
        if !paths.client_cert(id).exists() || !paths.client_key(id).exists() {
            let (cert, key) = ca.issue(
                id,
                std::slice::from_ref(identity),
                false,
                Validity::default(),
            )?;
            write(&paths.client_cert(id), &cert)?;
            write(&paths.client_key(id), &key)?;
            created = true;
        }
    }
    if !paths.checkpoint_key().exists() || !paths.checkpoint_public_key().exists() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        write(&paths.checkpoint_key(), &key.serialize_pem())?;
        write(
            &paths.checkpoint_public_key(),
            &crate::audit::checkpoint::encode_public_key(key.public_key_raw()),
        )?;
        created = true;
    }
    if !paths.token_key().exists() || !paths.jwks().exists() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        write(&paths.token_key(), &key.serialize_pem())?;
        write(
            &paths.jwks(),
            &jwks_for_ed25519(key.public_key_raw(), DEV_KID),
        )?;
        created = true;
    }
    Ok(created)
}

/// The configuration `serve --dev` runs with: the material under `<data>/dev/`.
pub fn dev_config(
    data: &Path,
    policies: &Path,
    listen: &str,
) -> Result<crate::config::Config, std::net::AddrParseError> {
    use crate::config::{ClaimNames, Config, Limits, LogConfig, TlsFiles, TokenConfig};
    let paths = DevPaths::new(data);
    Ok(Config {
        listen: listen.parse()?,
        policy_dir: policies.to_path_buf(),
        data_dir: data.to_path_buf(),
        shutdown_grace: std::time::Duration::from_secs(5),
        tls: TlsFiles {
            cert: paths.server_cert(),
            key: paths.server_key(),
            client_ca: paths.ca_cert(),
        },
        tokens: TokenConfig {
            jwks_file: paths.jwks(),
            issuer: DEV_ISSUER.to_string(),
            audience: DEV_AUDIENCE.to_string(),
            leeway: std::time::Duration::from_secs(30),
            max_bytes: 16 * 1024,
            claims: ClaimNames::default(),
        },
        log: LogConfig {
            path: data.join("decisions.db"),
            checkpoint_key: paths.checkpoint_key(),
            checkpoint_every: 10_000,
            checkpoint_interval: std::time::Duration::from_secs(60),
            retention: None,
        },
        limits: Limits::default(),
        // `serve --dev` turns them on; tests run many servers in one process.
        metrics: None,
    })
}

/// A JWKS holding one Ed25519 public key.
pub fn jwks_for_ed25519(public_raw: &[u8], kid: &str) -> String {
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public_raw);
    serde_json::json!({ "keys": [ { "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig" } ] }).to_string()
}

/// Claims of a development token.
#[derive(Debug, Clone, Default)]
pub struct TokenClaims {
    pub sub: String,
    pub section: Option<String>,
    pub kind: Option<String>,
    pub contract: Option<String>,
    pub amr: Vec<String>,
    pub roles: Vec<String>,
    pub ttl_secs: i64,
}

/// Signs a development token with the dev signing key (PKCS#8 PEM).
pub fn sign_token(
    key_pem: &str,
    claims: &TokenClaims,
) -> Result<String, jsonwebtoken::errors::Error> {
    let key = jsonwebtoken::EncodingKey::from_ed_pem(key_pem.as_bytes())?;
    let now = chrono::Utc::now().timestamp();
    let mut body = serde_json::json!({
        "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "sub": claims.sub,
        "iat": now, "nbf": now, "exp": now + claims.ttl_secs,
    });
    if let Some(map) = body.as_object_mut() {
        if let Some(s) = &claims.section {
            map.insert("section".into(), s.clone().into());
        }
        if let Some(k) = &claims.kind {
            map.insert("kind".into(), k.clone().into());
        }
        if let Some(c) = &claims.contract {
            map.insert("contract".into(), c.clone().into());
        }
        if !claims.amr.is_empty() {
            map.insert("amr".into(), claims.amr.clone().into());
        }
        if !claims.roles.is_empty() {
            map.insert("roles".into(), claims.roles.clone().into());
        }
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(DEV_KID.to_string());
    jsonwebtoken::encode(&header, &body, &key)
}
