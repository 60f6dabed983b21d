//! Integration tests, built as one binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bad_input;
mod decisions;
mod diagnostics;
mod faults;
mod log;
mod service;
mod support;
