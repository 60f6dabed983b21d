//! `sekimori audit verify|checkpoint` — offline, on the store file.

use super::{EXIT_OK, EXIT_VERIFY_FAILED};
use crate::audit::checkpoint::decode_public_key;
use crate::audit::store::{Checkpoint, Store};
use crate::audit::verify::verify;
use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use std::io::Write as _;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Verify the decision log: every hash, sequence continuity, every checkpoint
    /// (exit 4 and the first bad record when it fails).
    Verify(VerifyArgs),
    /// Export the latest signed checkpoint, to keep somewhere the server cannot write.
    Checkpoint(CheckpointArgs),
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The store file (e.g. data/decisions.db).
    #[arg(long)]
    db: PathBuf,
    /// The checkpoint public key (`ed25519:...`); without it signatures are not checked.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// A checkpoint exported earlier with `audit checkpoint`.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    #[arg(long)]
    db: PathBuf,
    /// Where to write the checkpoint (JSON).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(cmd: AuditCommand) -> anyhow::Result<u8> {
    match cmd {
        AuditCommand::Verify(a) => run_verify(&a),
        AuditCommand::Checkpoint(a) => run_checkpoint(&a),
    }
}

fn open(db: &std::path::Path) -> anyhow::Result<Store> {
    if !db.is_file() {
        return Err(anyhow!("`{}` is not a decision log file", db.display()));
    }
    Store::open_read_only(db).with_context(|| format!("opening `{}`", db.display()))
}

fn run_verify(a: &VerifyArgs) -> anyhow::Result<u8> {
    let store = open(&a.db)?;
    let key = match &a.public_key {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading `{}`", p.display()))?;
            Some(decode_public_key(&text).ok_or_else(|| {
                anyhow!(
                    "`{}` is not a checkpoint public key (ed25519:BASE64)",
                    p.display()
                )
            })?)
        }
        None => None,
    };
    let external: Option<Checkpoint> = match &a.checkpoint {
        Some(p) => Some(
            serde_json::from_str(
                &std::fs::read_to_string(p)
                    .with_context(|| format!("reading `{}`", p.display()))?,
            )
            .with_context(|| format!("`{}` is not an exported checkpoint", p.display()))?,
        ),
        None => None,
    };
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let started = std::time::Instant::now();
    let report = verify(&store, key.as_deref(), external.as_ref(), |n| {
        if interactive {
            eprint!("\rverified {n} records…");
            let _ = std::io::stderr().flush();
        }
    })?;
    if interactive {
        eprintln!();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let secs = started.elapsed().as_secs_f64();
        match &report.problem {
            None => println!(
                "OK 改ざんなし: {} records (seq {}..={}), {} checkpoints{}, in {secs:.1} s",
                report.records,
                report.first_seq.unwrap_or(0),
                report.last_seq.unwrap_or(0),
                report.checkpoints,
                if report.checkpoints_signature_checked {
                    " with valid signatures"
                } else {
                    " (signatures not checked: give --public-key)"
                }
            ),
            Some(p) => {
                println!("FAILED 検証失敗: first bad record: {}", p.seq);
                println!("  {}", p.what);
            }
        }
    }
    Ok(if report.ok() {
        EXIT_OK
    } else {
        EXIT_VERIFY_FAILED
    })
}

fn run_checkpoint(a: &CheckpointArgs) -> anyhow::Result<u8> {
    let store = open(&a.db)?;
    let latest = store
        .checkpoints()?
        .pop()
        .ok_or_else(|| anyhow!("the log has no checkpoint yet"))?;
    std::fs::write(&a.out, serde_json::to_string_pretty(&latest)? + "\n")
        .with_context(|| format!("writing `{}`", a.out.display()))?;
    println!(
        "checkpoint at record {} written to {}",
        latest.seq,
        a.out.display()
    );
    Ok(EXIT_OK)
}
