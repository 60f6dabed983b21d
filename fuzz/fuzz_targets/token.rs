//! Subject-token verification. Two modes, by the first byte:
//! - 0: the rest is a token as it arrives on the wire; nobody here holds the signing key of
//!   the JWKS, so every input must be refused (a success would be a forgery);
//! - 1: the rest is a claims payload, signed here with the JWKS's key: verification never
//!   panics, and what it accepts has claims within SPEC §5's bounds.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};
use sekimori::auth::token::TokenVerifier;
use sekimori::config::TokenConfig;
use std::sync::OnceLock;

struct Keys {
    signer: Ed25519KeyPair,
    verifier: TokenVerifier,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let signer = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let jwks = sekimori::devpki::jwks_for_ed25519(signer.public_key().as_ref(), "k1");
        let cfg = TokenConfig {
            jwks_file: "fuzz".into(),
            issuer: "fuzz-iss".into(),
            audience: "fuzz-aud".into(),
            leeway: std::time::Duration::from_secs(30),
            max_bytes: 16 * 1024,
            claims: sekimori::config::ClaimNames::default(),
        };
        let verifier = TokenVerifier::from_jwks_json(&jwks, "fuzz", &cfg).unwrap();
        Keys { signer, verifier }
    })
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let k = keys();
    if mode % 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        assert!(
            k.verifier.verify(token).is_err(),
            "accepted without the key: {token}"
        );
        return;
    }
    let signing_input = format!(
        "{}.{}",
        b64(br#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#),
        b64(rest)
    );
    let signature = k.signer.sign(signing_input.as_bytes());
    let token = format!("{signing_input}.{}", b64(signature.as_ref()));
    if let Ok(v) = k.verifier.verify(&token) {
        let bounded = |s: &str| {
            s.len() <= 256
                && !s.chars().any(|c| {
                    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
                })
        };
        assert!(
            !v.subject.sub.is_empty() && bounded(&v.subject.sub),
            "{:?}",
            v.subject.sub
        );
        assert!(v.subject.section.as_deref().is_none_or(bounded));
        assert!(v.subject.contract.as_deref().is_none_or(bounded));
        assert!(
            v.roles
                .iter()
                .all(|r| matches!(r.as_str(), "ciso" | "security_admin" | "auditor") || bounded(r))
        );
    }
});
