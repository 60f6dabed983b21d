//! sekimori (関守) — the access-control policy decision service of a city government.
//!
//! Dependencies point one way: `cli → engine → policy`. `policy` turns the admins' YAML
//! bundle into a validated, typed model with source spans and knows nothing of Casbin;
//! `engine` is the only module that names Casbin: it compiles a bundle at a point in time,
//! with the runtime state, into a snapshot and decides requests against it.

pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod devpki;
pub mod engine;
pub mod generate;
pub mod living;
pub mod metrics;
pub mod pdp;
pub mod policy;
pub mod server;
pub mod state;
pub mod time;
