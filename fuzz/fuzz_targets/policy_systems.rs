//! `systems.yaml` with arbitrary content in an otherwise valid bundle (see `common/policy.rs`).
#![no_main]

#[path = "common/policy.rs"]
mod policy;

libfuzzer_sys::fuzz_target!(|data: &[u8]| policy::one_file("systems.yaml", data));
