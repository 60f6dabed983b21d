//! `sekimori admin status|reload|emergency declare|end|lockdown declare|lift`.

use super::EXIT_OK;
use super::audit_cmd::{Connection, authed, connect_channel, status};
use crate::policy::diag::escape;
use crate::server::proto::admin_client::AdminClient;
use crate::server::proto::{
    self, DeclareEmergencyRequest, DeclareLockdownRequest, EndRequest, GetStatusRequest,
    ReloadRequest,
};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Policy version, files, last reload with its diagnostics, counts, emergencies,
    /// lockdowns, the decision log's head.
    Status(Common),
    /// Re-read the policy files now (security_admin or ciso).
    Reload(Common),
    /// Emergencies (緊急事態; ciso).
    #[command(subcommand)]
    Emergency(EmergencyCommand),
    /// Lockdowns (遮断; declare: security_admin or ciso; lift: ciso).
    #[command(subcommand)]
    Lockdown(LockdownCommand),
}

#[derive(Args, Debug)]
pub struct Common {
    #[command(flatten)]
    conn: Connection,
    /// In dev mode, the role of the minted operator token.
    #[arg(long = "as", default_value = "ciso")]
    role: String,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum EmergencyCommand {
    Declare(EmergencyArgs),
    End(EndArgs),
}

#[derive(Subcommand, Debug)]
pub enum LockdownCommand {
    Declare(LockdownArgs),
    Lift(EndArgs),
}

#[derive(Args, Debug)]
pub struct EmergencyArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    id: String,
    /// Covers every asset.
    #[arg(long)]
    all: bool,
    #[arg(long, value_delimiter = ',')]
    sections: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    assets: Vec<String>,
    /// Responder users, comma separated.
    #[arg(long, value_delimiter = ',')]
    responders: Vec<String>,
    /// Responder sections (their staff), comma separated.
    #[arg(long, value_delimiter = ',')]
    responder_sections: Vec<String>,
    #[arg(long)]
    reason: String,
    /// Start (JST date or RFC 3339; default now).
    #[arg(long, default_value = "")]
    from: String,
    /// End, at most 72 hours after the start.
    #[arg(long)]
    until: String,
}

#[derive(Args, Debug)]
pub struct LockdownArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long)]
    id: String,
    #[arg(long, value_delimiter = ',')]
    assets: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    sections: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Users still allowed through, comma separated.
    #[arg(long, value_delimiter = ',')]
    exempt: Vec<String>,
    #[arg(long)]
    reason: String,
    #[arg(long, default_value = "")]
    from: String,
    /// Optional end; without it the lockdown lasts until lifted.
    #[arg(long, default_value = "")]
    until: String,
}

#[derive(Args, Debug)]
pub struct EndArgs {
    #[command(flatten)]
    common: Common,
    id: String,
}

pub fn run(cmd: AdminCommand) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(cmd))
}

async fn client(c: &Common) -> anyhow::Result<(AdminClient<tonic::transport::Channel>, String)> {
    let (channel, token) = connect_channel(&c.conn, &c.role).await?;
    Ok((AdminClient::new(channel), token))
}

fn print_reload(o: &proto::ReloadOutcome) {
    println!(
        "last reload: {} at {} (policy {})",
        o.outcome, o.at, o.policy_version
    );
    for d in &o.diagnostics {
        println!(
            "  {} {}[{}]: {}",
            escape(&d.location),
            d.severity,
            d.code,
            escape(&d.message)
        );
    }
}

async fn run_async(cmd: AdminCommand) -> anyhow::Result<u8> {
    match cmd {
        AdminCommand::Status(c) => {
            let (mut a, token) = client(&c).await?;
            let s = a
                .get_status(authed(GetStatusRequest {}, &token)?)
                .await
                .map_err(status)?
                .into_inner();
            if c.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "policy_version": s.policy_version, "loaded_at": s.loaded_at, "next_change": s.next_change,
                        "files": s.files.iter().map(|f| serde_json::json!({"path": f.path, "sha256": f.sha256})).collect::<Vec<_>>(),
                        "last_reload": s.last_reload.as_ref().map(|r| serde_json::json!({"outcome": r.outcome, "at": r.at, "diagnostics": r.diagnostics.iter().map(|d| serde_json::json!({"severity": d.severity, "code": d.code, "location": d.location, "message": d.message})).collect::<Vec<_>>()})),
                        "counts": {"sections": s.sections, "systems": s.systems, "assets": s.assets, "grants": s.grants, "grants_in_force": s.grants_in_force, "contracts": s.contracts, "tests": s.tests},
                        "emergencies": s.emergencies.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
                        "lockdowns": s.lockdowns.iter().map(|l| l.id.clone()).collect::<Vec<_>>(),
                        "log": {"head_seq": s.log_head_seq, "head_hash": s.log_head_hash, "last_checkpoint_seq": s.log_last_checkpoint_seq, "healthy": s.log_healthy},
                        "uptime_seconds": s.uptime_seconds, "build_version": s.build_version,
                    })
                );
                return Ok(EXIT_OK);
            }
            println!("sekimori {} — up {} s", s.build_version, s.uptime_seconds);
            println!(
                "policy version {} loaded at {}; next window change {}",
                s.policy_version,
                s.loaded_at,
                if s.next_change.is_empty() {
                    "none"
                } else {
                    &s.next_change
                }
            );
            println!(
                "{} sections, {} systems, {} assets, {} grants ({} in force), {} contracts, {} tests, {} files",
                s.sections,
                s.systems,
                s.assets,
                s.grants,
                s.grants_in_force,
                s.contracts,
                s.tests,
                s.files.len()
            );
            match &s.last_reload {
                Some(o) => print_reload(o),
                None => println!("no reload since start"),
            }
            for e in &s.emergencies {
                println!(
                    "emergency {}: {} .. {}, reason {} (by {})",
                    e.id,
                    e.from,
                    e.until,
                    escape(&e.reason),
                    e.declared_by
                );
            }
            for l in &s.lockdowns {
                println!(
                    "lockdown {}: assets [{}] sections [{}] systems [{}] from {}{}, reason {} (by {})",
                    l.id,
                    l.assets.join(", "),
                    l.sections.join(", "),
                    l.systems.join(", "),
                    l.from,
                    if l.until.is_empty() {
                        String::new()
                    } else {
                        format!(" until {}", l.until)
                    },
                    escape(&l.reason),
                    l.declared_by
                );
            }
            println!(
                "decision log: head {} ({}), last checkpoint {}, {}",
                s.log_head_seq,
                s.log_head_hash,
                s.log_last_checkpoint_seq,
                if s.log_healthy {
                    "healthy"
                } else {
                    "CANNOT COMMIT"
                }
            );
            Ok(EXIT_OK)
        }
        AdminCommand::Reload(c) => {
            let (mut a, token) = client(&c).await?;
            let r = a
                .reload(authed(ReloadRequest {}, &token)?)
                .await
                .map_err(status)?
                .into_inner();
            if let Some(o) = &r.outcome {
                print_reload(o);
                if o.outcome != "ok" {
                    return Ok(super::EXIT_POLICY);
                }
            }
            Ok(EXIT_OK)
        }
        AdminCommand::Emergency(EmergencyCommand::Declare(e)) => {
            let (mut a, token) = client(&e.common).await?;
            let r = a
                .declare_emergency(authed(
                    DeclareEmergencyRequest {
                        emergency: Some(proto::Emergency {
                            id: e.id.clone(),
                            all: e.all,
                            sections: e.sections.clone(),
                            assets: e.assets.clone(),
                            responder_users: e.responders.clone(),
                            responder_sections: e.responder_sections.clone(),
                            reason: e.reason.clone(),
                            from: e.from.clone(),
                            until: e.until.clone(),
                            declared_by: String::new(),
                        }),
                    },
                    &token,
                )?)
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "emergency {} declared; policy version {}",
                e.id, r.policy_version
            );
            Ok(EXIT_OK)
        }
        AdminCommand::Emergency(EmergencyCommand::End(e)) => {
            let (mut a, token) = client(&e.common).await?;
            let r = a
                .end_emergency(authed(EndRequest { id: e.id.clone() }, &token)?)
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "emergency {} ended; policy version {}",
                e.id, r.policy_version
            );
            Ok(EXIT_OK)
        }
        AdminCommand::Lockdown(LockdownCommand::Declare(l)) => {
            let (mut a, token) = client(&l.common).await?;
            let r = a
                .declare_lockdown(authed(
                    DeclareLockdownRequest {
                        lockdown: Some(proto::Lockdown {
                            id: l.id.clone(),
                            assets: l.assets.clone(),
                            sections: l.sections.clone(),
                            systems: l.systems.clone(),
                            reason: l.reason.clone(),
                            exempt: l.exempt.clone(),
                            from: l.from.clone(),
                            until: l.until.clone(),
                            declared_by: String::new(),
                        }),
                    },
                    &token,
                )?)
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "lockdown {} declared; in effect for the next check; policy version {}",
                l.id, r.policy_version
            );
            Ok(EXIT_OK)
        }
        AdminCommand::Lockdown(LockdownCommand::Lift(l)) => {
            let (mut a, token) = client(&l.common).await?;
            let r = a
                .lift_lockdown(authed(EndRequest { id: l.id.clone() }, &token)?)
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "lockdown {} lifted; policy version {}",
                l.id, r.policy_version
            );
            Ok(EXIT_OK)
        }
    }
}
