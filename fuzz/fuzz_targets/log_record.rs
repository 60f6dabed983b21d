//! The decision-log record decoders that read untrusted bytes:
//! - an archive file (`audit verify --archive`): never a panic; with a public key nobody
//!   here signed with, never a success (a success would be a forged checkpoint);
//! - records as the auditors' CLI receives them, turned into CSV: no cell ever starts with
//!   a spreadsheet formula character, and every cell is quoted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sekimori::server::proto::LogRecord;

/// An Ed25519 public key (32 bytes) whose private half was thrown away.
const STRANGER_KEY: [u8; 32] = [
    0x3d, 0x40, 0x17, 0xc3, 0xe8, 0x43, 0x89, 0x5a, 0x92, 0xb7, 0x0a, 0xa7, 0x4d, 0x1b, 0x7e, 0xbc,
    0x9c, 0x98, 0x2c, 0xcf, 0x2e, 0xc4, 0x96, 0x8c, 0xc0, 0xcd, 0x55, 0xf1, 0x2a, 0xf4, 0x66, 0x0c,
];

fuzz_target!(|data: &[u8]| {
    let _ = sekimori::audit::archive::verify_archive_from(data, None);
    if let Ok(Ok(report)) = sekimori::audit::archive::verify_archive_from(data, Some(&STRANGER_KEY))
    {
        panic!("an archive verified against a key nobody holds: {report:?}");
    }
    for line in String::from_utf8_lossy(data).lines().take(20) {
        let record = LogRecord {
            seq: line.len() as u64,
            time_us: line.len() as i64 * 1_000_003,
            kind: "decision".into(),
            canonical_json: line.to_string(),
            ..LogRecord::default()
        };
        let csv = sekimori::cli::audit_cmd::csv_record(&record);
        // Split the quoted fields; each must open with a quote and never with a formula.
        let mut rest = csv.as_str();
        while !rest.is_empty() {
            assert!(rest.starts_with('"'), "an unquoted field in {csv}");
            let body = &rest[1..];
            assert!(
                !body.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "a formula cell in {csv}"
            );
            // Find the closing quote (a doubled quote is an escaped one).
            let mut end = None;
            let bytes = body.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'"' {
                    if bytes.get(i + 1) == Some(&b'"') {
                        i += 2;
                        continue;
                    }
                    end = Some(i);
                    break;
                }
                i += 1;
            }
            let end = end.expect("every field is closed");
            rest = &body[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
});
