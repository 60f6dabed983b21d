//! Command line: argument parsing, rendering for people, exit codes. `anyhow` lives here
//! only.
//!
//! Exit codes: 0 ok, 1 error, 2 usage, 3 policy invalid or tests failed, 4 log
//! verification failed, 5 check denied.

mod admin_cmd;
pub mod audit_cmd;
mod diff;
mod policy_cmd;
pub mod service_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub const EXIT_OK: u8 = 0;
pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_POLICY: u8 = 3;
pub const EXIT_VERIFY_FAILED: u8 = 4;
pub const EXIT_DENIED: u8 = 5;

#[derive(Parser, Debug)]
#[command(
    name = "sekimori",
    version,
    about = "関守 — access-control decisions for the city's information assets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Check, test, compile and explain a policy bundle (offline).
    #[command(subcommand)]
    Policy(policy_cmd::PolicyCommand),
    /// Run the decision service (gRPC over mutual TLS).
    Serve(service_cmd::ServeArgs),
    /// Ask a running sekimori for one decision and print it (exit 5 on deny).
    Check(service_cmd::CheckArgs),
    /// The decision log, for auditors: query, export, summarize, verify.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Operate a running sekimori: status, reload, emergencies, lockdowns.
    #[command(subcommand)]
    Admin(admin_cmd::AdminCommand),
    /// Check a configuration file: every problem with its key path.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Development helpers.
    #[command(subcommand)]
    Dev(DevCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Parse and validate FILE, and check that the files it names can be read.
    Check { file: std::path::PathBuf },
}

#[derive(Subcommand, Debug)]
enum DevCommand {
    /// Generate a city-scale bundle for benchmarks and load tests.
    Generate(crate::generate::GenerateArgs),
    /// Create the development CA, certificates and token key (`serve --dev` does this too).
    Init(service_cmd::DevInitArgs),
    /// Mint a development subject token signed with the development key.
    Token(service_cmd::DevTokenArgs),
}

fn config_check(file: &std::path::Path) -> anyhow::Result<u8> {
    let cfg = match crate::config::Config::load(file) {
        Ok(c) => c,
        Err(e) => {
            println!("{e}");
            return Ok(EXIT_POLICY);
        }
    };
    let mut problems = Vec::new();
    for (key, path) in [
        ("tls.cert", &cfg.tls.cert),
        ("tls.key", &cfg.tls.key),
        ("tls.client_ca", &cfg.tls.client_ca),
        ("tokens.jwks_file", &cfg.tokens.jwks_file),
        ("log.checkpoint_key", &cfg.log.checkpoint_key),
    ] {
        if let Err(e) = std::fs::metadata(path) {
            problems.push(format!("`{key}`: `{}`: {}", path.display(), e.kind()));
        }
    }
    if !cfg.policy_dir.is_dir() {
        problems.push(format!(
            "`policy_dir`: `{}` is not a directory",
            cfg.policy_dir.display()
        ));
    }
    if problems.is_empty() {
        println!(
            "{}: OK (listen {}, policies {}, log {})",
            file.display(),
            cfg.listen,
            cfg.policy_dir.display(),
            cfg.log.path.display()
        );
        Ok(EXIT_OK)
    } else {
        for p in &problems {
            println!("{}: {p}", file.display());
        }
        Ok(EXIT_POLICY)
    }
}

/// Parses arguments, runs the command, maps the outcome to an exit code.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let result = match cli.command {
        Command::Policy(cmd) => policy_cmd::run(cmd),
        Command::Serve(args) => service_cmd::run_serve(&args),
        Command::Audit(cmd) => audit_cmd::run(cmd),
        Command::Admin(cmd) => admin_cmd::run(cmd),
        Command::Config(ConfigCommand::Check { file }) => config_check(&file),
        Command::Check(args) => service_cmd::run_check(&args),
        Command::Dev(DevCommand::Generate(args)) => crate::generate::run(&args).map(|()| EXIT_OK),
        Command::Dev(DevCommand::Init(args)) => service_cmd::run_dev_init(&args),
        Command::Dev(DevCommand::Token(args)) => service_cmd::run_dev_token(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
