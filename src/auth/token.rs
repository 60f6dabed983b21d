//! Subject tokens (SPEC §5): a JWT verified with a key from the JWKS, the algorithm pinned
//! by the key (RS256, ES256 or EdDSA — never `none`, never HMAC), `iss`, `aud`, `exp`
//! required, `nbf` checked, a small leeway; claims mapped to a [`Subject`].

use crate::config::{ClaimNames, TokenConfig};
use crate::engine::{Subject, SubjectKind};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::collections::HashMap;

/// Why a token was refused. Shown to operators in logs; clients only learn
/// `UNAUTHENTICATED` with a generic message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("token larger than the limit")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not allowed")]
    Algorithm,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("claim `{0}` missing or invalid")]
    Claim(&'static str),
}

impl TokenError {
    /// A short label for metrics and logs.
    pub fn cause(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::TooLarge => "too_large",
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Signature => "signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::Claim(_) => "claim",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read JWKS file `{path}`: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("JWKS file `{path}` is not a JSON Web Key Set: {message}")]
    Parse { path: String, message: String },
    #[error("JWKS file `{path}`: {message}")]
    Key { path: String, message: String },
}

/// The verified identity of an operator or subject, with roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub subject: Subject,
    pub roles: Vec<String>,
}

struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies subject tokens against a fixed set of keys.
pub struct TokenVerifier {
    keys: HashMap<String, Key>,
    /// Used when a token has no `kid` and the set holds exactly one key.
    only_key: Option<String>,
    issuer: String,
    audience: String,
    leeway_secs: u64,
    max_bytes: usize,
    claims: ClaimNames,
    /// Tokens verified before, by their exact text: a business system sends the same
    /// person's token for many checks, and a signature check costs 30–200 µs. A hit is
    /// still checked against `exp` and `nbf` at every use.
    cache: std::sync::Mutex<HashMap<String, Verified>>,
}

#[derive(Clone)]
struct Verified {
    token: VerifiedToken,
    exp: i64,
    nbf: Option<i64>,
}

/// Most tokens kept; when full the cache starts over (a bound, not an LRU: simple and
/// enough for the working set of a city's staff).
const CACHE_TOKENS: usize = 50_000;

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// The algorithm a key is pinned to, from its type (and its `alg`, which must agree).
fn pinned_algorithm(jwk: &Jwk) -> Result<Algorithm, String> {
    let by_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(String::from("symmetric (HMAC) keys are not accepted"));
        }
        _ => {
            return Err(String::from(
                "only RSA (RS256), P-256 (ES256) and Ed25519 (EdDSA) keys are accepted",
            ));
        }
    };
    if let Some(alg) = &jwk.common.key_algorithm {
        let named = format!("{alg:?}");
        if named != format!("{by_type:?}") {
            return Err(format!(
                "key `alg` {named} does not match its type ({by_type:?})"
            ));
        }
    }
    Ok(by_type)
}

impl TokenVerifier {
    /// Loads the JWKS file named in the config.
    pub fn from_config(cfg: &TokenConfig) -> Result<Self, JwksError> {
        let path = cfg.jwks_file.display().to_string();
        let text = std::fs::read_to_string(&cfg.jwks_file).map_err(|source| JwksError::Read {
            path: path.clone(),
            source,
        })?;
        Self::from_jwks_json(&text, &path, cfg)
    }

    pub fn from_jwks_json(text: &str, path: &str, cfg: &TokenConfig) -> Result<Self, JwksError> {
        let set: JwkSet = serde_json::from_str(text).map_err(|e| JwksError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        let mut keys = HashMap::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone().ok_or_else(|| JwksError::Key {
                path: path.to_string(),
                message: format!("key {i} has no `kid`"),
            })?;
            let algorithm = pinned_algorithm(jwk).map_err(|message| JwksError::Key {
                path: path.to_string(),
                message: format!("key `{kid}`: {message}"),
            })?;
            let key = DecodingKey::from_jwk(jwk).map_err(|e| JwksError::Key {
                path: path.to_string(),
                message: format!("key `{kid}`: {e}"),
            })?;
            keys.insert(kid, Key { algorithm, key });
        }
        if keys.is_empty() {
            return Err(JwksError::Key {
                path: path.to_string(),
                message: String::from("the set holds no keys"),
            });
        }
        let only_key = (keys.len() == 1)
            .then(|| keys.keys().next().cloned())
            .flatten();
        Ok(TokenVerifier {
            keys,
            only_key,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway_secs: cfg.leeway.as_secs(),
            max_bytes: cfg.max_bytes,
            claims: cfg.claims.clone(),
            cache: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Verifies a token and maps its claims.
    pub fn verify(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > self.max_bytes {
            return Err(TokenError::TooLarge);
        }
        let now = chrono::Utc::now().timestamp();
        let leeway = i64::try_from(self.leeway_secs).unwrap_or(0);
        if let Ok(mut cache) = self.cache.lock() {
            if let Some(hit) = cache.get(token) {
                if now < hit.exp + leeway && hit.nbf.is_none_or(|n| now + leeway >= n) {
                    return Ok(hit.token.clone());
                }
                // Expired (or not yet valid): verify in full, which gives the right error.
                cache.remove(token);
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => TokenError::Algorithm,
            _ => TokenError::Malformed,
        })?;
        let kid = match header.kid.as_deref() {
            Some(k) => k,
            None => self.only_key.as_deref().ok_or(TokenError::UnknownKey)?,
        };
        let key = self.keys.get(kid).ok_or(TokenError::UnknownKey)?;
        if header.alg != key.algorithm {
            return Err(TokenError::Algorithm);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.validate_exp = true;
        validation.leeway = self.leeway_secs;
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidIssuer => TokenError::Issuer,
                K::InvalidAudience => TokenError::Audience,
                K::InvalidSignature => TokenError::Signature,
                K::InvalidAlgorithm | K::InvalidAlgorithmName => TokenError::Algorithm,
                K::MissingRequiredClaim(c) => match c.as_str() {
                    "iss" => TokenError::Issuer,
                    "aud" => TokenError::Audience,
                    _ => TokenError::Claim("exp"),
                },
                _ => TokenError::Malformed,
            }
        })?;
        let verified = self.map_claims(&data.claims)?;
        if let (Some(exp), Ok(mut cache)) = (
            data.claims.get("exp").and_then(Value::as_i64),
            self.cache.lock(),
        ) {
            if cache.len() >= CACHE_TOKENS {
                cache.clear();
            }
            cache.insert(
                token.to_string(),
                Verified {
                    token: verified.clone(),
                    exp,
                    nbf: data.claims.get("nbf").and_then(Value::as_i64),
                },
            );
        }
        Ok(verified)
    }

    fn map_claims(&self, claims: &Value) -> Result<VerifiedToken, TokenError> {
        let c = &self.claims;
        let sub = text_claim(claims, &c.sub).ok_or(TokenError::Claim("sub"))?;
        let section =
            optional_text(claims, &c.section).map_err(|()| TokenError::Claim("section"))?;
        let contract =
            optional_text(claims, &c.contract).map_err(|()| TokenError::Claim("contract"))?;
        let kind_claim = optional_text(claims, &c.kind).map_err(|()| TokenError::Claim("kind"))?;
        let kind = SubjectKind::parse(kind_claim.as_deref()).ok_or(TokenError::Claim("kind"))?;
        let amr = string_list(claims, &c.amr).map_err(|()| TokenError::Claim("amr"))?;
        let roles = string_list(claims, &c.roles).map_err(|()| TokenError::Claim("roles"))?;
        Ok(VerifiedToken {
            subject: Subject::new(&sub, section.as_deref(), kind, contract.as_deref(), &amr),
            roles,
        })
    }
}

/// Longest string claim accepted.
const MAX_CLAIM_BYTES: usize = 256;

fn clean(text: &str) -> bool {
    !text.trim().is_empty()
        && text.len() <= MAX_CLAIM_BYTES
        && !text.chars().any(|c| {
            c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        })
}

fn text_claim(claims: &Value, name: &str) -> Option<String> {
    claims
        .get(name)?
        .as_str()
        .filter(|s| clean(s))
        .map(str::to_string)
}

/// Absent or blank is `None`; present but not a clean string is an error.
fn optional_text(claims: &Value, name: &str) -> Result<Option<String>, ()> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) if clean(s) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

fn string_list(claims: &Value, name: &str) -> Result<Vec<String>, ()> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= 32 => items
            .iter()
            .map(|v| {
                v.as_str()
                    .filter(|s| clean(s))
                    .map(str::to_string)
                    .ok_or(())
            })
            .collect(),
        Some(Value::String(s)) if clean(s) => {
            Ok(s.split_whitespace().map(str::to_string).collect())
        }
        Some(_) => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> (TokenVerifier, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let jwks = crate::devpki::jwks_for_ed25519(key.public_key_raw(), crate::devpki::DEV_KID);
        let cfg = TokenConfig {
            jwks_file: "jwks.json".into(),
            issuer: crate::devpki::DEV_ISSUER.into(),
            audience: crate::devpki::DEV_AUDIENCE.into(),
            leeway: std::time::Duration::from_secs(0),
            max_bytes: 16 * 1024,
            claims: ClaimNames::default(),
        };
        (
            TokenVerifier::from_jwks_json(&jwks, "jwks.json", &cfg).unwrap(),
            key.serialize_pem(),
        )
    }

    #[test]
    fn a_cached_token_still_expires() {
        let (v, key) = verifier();
        let token = crate::devpki::sign_token(
            &key,
            &crate::devpki::TokenClaims {
                sub: "e1".into(),
                ttl_secs: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(v.verify(&token).unwrap().subject.sub, "e1");
        assert_eq!(v.verify(&token).unwrap().subject.sub, "e1", "a hit");
        assert_eq!(v.cache.lock().unwrap().len(), 1);
        std::thread::sleep(std::time::Duration::from_millis(2300));
        assert_eq!(
            v.verify(&token).unwrap_err(),
            TokenError::Expired,
            "the cache never outlives exp"
        );
    }

    #[test]
    fn only_verified_tokens_are_cached() {
        let (v, _) = verifier();
        assert!(v.verify("not.a.token").is_err());
        assert!(v.cache.lock().unwrap().is_empty());
    }
}
