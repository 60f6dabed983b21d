//! Subject-token verification with and without the verified-token cache: 20,000 distinct
//! Ed25519 tokens verified once each (every call a miss: signature, claims, mapping), then
//! again (every call a hit: the exact token text found, `exp`/`nbf` re-checked).
//! `cargo bench --bench token`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sekimori::auth::token::TokenVerifier;
use sekimori::config::{ClaimNames, TokenConfig};
use sekimori::devpki::{self, TokenClaims};
use std::hint::black_box;
use std::time::Instant;

fn percentiles(mut ns: Vec<u128>) -> (f64, f64) {
    ns.sort_unstable();
    let at = |p: f64| ns[((ns.len() as f64 * p) as usize).min(ns.len() - 1)] as f64 / 1000.0;
    (at(0.5), at(0.99))
}

fn main() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let jwks = devpki::jwks_for_ed25519(key.public_key_raw(), devpki::DEV_KID);
    let cfg = TokenConfig {
        jwks_file: "bench".into(),
        issuer: devpki::DEV_ISSUER.into(),
        audience: devpki::DEV_AUDIENCE.into(),
        leeway: std::time::Duration::from_secs(30),
        max_bytes: 16 * 1024,
        claims: ClaimNames::default(),
    };
    let verifier = TokenVerifier::from_jwks_json(&jwks, "bench", &cfg).unwrap();
    let pem = key.serialize_pem();
    let tokens: Vec<String> = (0..20_000)
        .map(|i| {
            devpki::sign_token(
                &pem,
                &TokenClaims {
                    sub: format!("e{i:05}"),
                    section: Some(format!("s{:03}", i % 200)),
                    amr: vec!["pwd".into(), "fpt".into()],
                    ttl_secs: 3600,
                    ..TokenClaims::default()
                },
            )
            .unwrap()
        })
        .collect();
    for label in [
        "without the cache (first sight of each token)",
        "with the cache (the same tokens again)",
    ] {
        let mut ns = Vec::with_capacity(tokens.len());
        for t in &tokens {
            let started = Instant::now();
            black_box(verifier.verify(black_box(t)).unwrap());
            ns.push(started.elapsed().as_nanos());
        }
        let (p50, p99) = percentiles(ns);
        eprintln!(
            "token verification {label}: median {p50:.2} µs, p99 {p99:.2} µs over {} tokens",
            tokens.len()
        );
    }
}
