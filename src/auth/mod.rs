//! Who is asking: the calling system from its client certificate, the subject from its
//! token. Nothing here decides access; it only establishes identities.

pub mod token;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

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
