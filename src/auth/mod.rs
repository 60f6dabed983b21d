//! Who is asking: the calling system from its client certificate, the subject from its
//! token. Nothing here decides access; it only establishes identities.

pub mod token;

use std::sync::Arc;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The identities of client certificates seen, by their DER bytes: every call presents
/// its connection's certificate, and parsing it each time cost about 1.5 % of the
/// service's CPU under load. An identity is a function of the certificate's bytes alone,
/// so the cache never needs invalidating; it is bounded (cleared when full) so that a
/// stream of distinct certificates cannot grow it.
#[derive(Debug, Default)]
pub struct IdentityCache {
    seen: parking_lot::RwLock<IdentitiesByCertificate>,
}

/// A certificate's DER bytes → its identities.
type IdentitiesByCertificate = crate::engine::facts::FastMap<Box<[u8]>, Arc<[String]>>;

impl IdentityCache {
    /// More distinct certificates than a city has systems, twice over.
    const CAPACITY: usize = 1024;

    /// [`certificate_identities`] of `der`, parsed once per distinct certificate.
    pub fn identities(&self, der: &[u8]) -> Arc<[String]> {
        if let Some(known) = self.seen.read().get(der) {
            return known.clone();
        }
        let parsed: Arc<[String]> = certificate_identities(der).into();
        let mut seen = self.seen.write();
        if seen.len() >= Self::CAPACITY {
            seen.clear();
        }
        seen.insert(der.into(), parsed.clone());
        parsed
    }
}

/// URI and DNS subject alternative names of a DER certificate, in certificate order.
/// An unparsable certificate has none.
pub fn certificate_identities(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some((*u).to_string()),
            GeneralName::DNSName(d) => Some((*d).to_string()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devpki::{DevCa, Validity};
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    fn der(ca: &DevCa, sans: &[&str]) -> Vec<u8> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let (pem, _) = ca
            .issue("test", &sans, false, Validity::default())
            .expect("issue");
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("pem")
            .to_vec()
    }

    /// The cache answers what parsing answers, for each certificate by its own bytes, and
    /// stays bounded however many certificates it sees.
    #[test]
    fn cached_identities_are_each_certificates_own_and_bounded() {
        let ca = DevCa::generate().expect("ca");
        let juki = der(&ca, &["spiffe://city/juki", "juki.city.local"]);
        let zei = der(&ca, &["spiffe://city/zeimu"]);
        let cache = IdentityCache::default();
        for _ in 0..3 {
            assert_eq!(
                &*cache.identities(&juki),
                ["spiffe://city/juki", "juki.city.local"]
            );
            assert_eq!(&*cache.identities(&zei), ["spiffe://city/zeimu"]);
        }
        assert!(cache.identities(b"not a certificate").is_empty());
        assert_eq!(
            cache.seen.read().len(),
            3,
            "one entry per distinct certificate"
        );
        for i in 0..(IdentityCache::CAPACITY + 10) {
            cache.identities(format!("junk {i}").as_bytes());
        }
        assert!(cache.seen.read().len() <= IdentityCache::CAPACITY);
        assert_eq!(&*cache.identities(&zei), ["spiffe://city/zeimu"]);
    }
}
