//! The tamper-evident decision log: records and their canonical encoding, the hash chain,
//! the embedded store, the group-commit writer, signed checkpoints and verification.
//!
//! Must not depend on `engine` or on generated proto types: an API change can never
//! change the bytes, and so the hash, of an old record.

pub mod archive;
pub mod checkpoint;
pub mod postings;
pub mod query;
pub mod record;
pub mod store;
pub mod verify;
pub mod writer;
