//! `sekimori policy check|test|compile|explain`.

use super::{EXIT_DENIED, EXIT_OK, EXIT_POLICY};
use crate::engine::decide::Obligation;
use crate::engine::{
    CasbinValue, Decision, Env, Explanation, Request, Snapshot, Subject, SubjectKind,
};
use crate::policy::decode::Decoder;
use crate::policy::diag::{Format, escape};
use crate::policy::model::{Action, RuntimeState, TestCase};
use crate::policy::{self, Loaded};
use crate::time::{Instant, format_jst, parse_policy_time};
use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::io::Write as _;
use std::path::{Path, PathBuf};

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Validate a bundle: every error and warning, with file:line:column and a hint.
    Check(CommonArgs),
    /// Run the decision tests under `tests/` (exit 3 when one fails).
    Test(TestArgs),
    /// Write the Casbin `model.conf` and `policy.csv` the bundle compiles to.
    Compile(CompileArgs),
    /// Decide one request and show why: the rules considered, the one that applied, and
    /// the Casbin request tuple.
    Explain(ExplainArgs),
    /// What a change does before it goes live: grants and assets added, removed or
    /// changed, and the (subject, asset, action) decisions that flip.
    Diff(DiffArgs),
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The bundle in force.
    old: PathBuf,
    /// The proposed bundle.
    new: PathBuf,
    /// The time to decide at (default now).
    #[arg(long)]
    at: Option<String>,
}

#[derive(Args, Debug)]
pub struct CommonArgs {
    /// The bundle directory.
    #[arg(default_value = "policies")]
    dir: PathBuf,
    /// The time for warnings and for tests without `at` (JST date or RFC 3339); default now.
    #[arg(long)]
    at: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "human")]
    format: Format,
}

#[derive(Args, Debug)]
pub struct TestArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Also write, per snapshot used, `model.conf`, `policy.csv` and the cases with their
    /// Casbin request tuples (`cases.jsonl`), for checking another Casbin implementation.
    #[arg(long, value_name = "DIR")]
    export_casbin: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Output directory for `model.conf` and `policy.csv`.
    #[arg(long)]
    out: PathBuf,
    /// Runtime state (YAML: `emergencies:`, `lockdowns:`) to compile in.
    #[arg(long)]
    state: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Calling system id.
    #[arg(long)]
    system: String,
    /// Subject user id (`sub`).
    #[arg(long)]
    sub: String,
    #[arg(long)]
    section: Option<String>,
    /// `staff` (default) or `contractor`.
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    contract: Option<String>,
    /// Authentication methods, comma separated (e.g. `pwd,fpt`).
    #[arg(long, value_delimiter = ',')]
    amr: Vec<String>,
    #[arg(long)]
    asset: String,
    #[arg(long)]
    action: String,
    #[arg(long)]
    device_issued: bool,
    #[arg(long)]
    purpose: Option<String>,
    #[arg(long)]
    break_glass_reason: Option<String>,
    /// Runtime state file (YAML: `emergencies:`, `lockdowns:`).
    #[arg(long)]
    state: Option<PathBuf>,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<u8> {
    match cmd {
        PolicyCommand::Check(a) => check(&a),
        PolicyCommand::Test(a) => test(&a),
        PolicyCommand::Compile(a) => compile(&a),
        PolicyCommand::Explain(a) => explain(&a),
        PolicyCommand::Diff(a) => diff_cmd(&a),
    }
}

fn parse_at(at: Option<&str>) -> anyhow::Result<Instant> {
    match at {
        None => Ok(chrono::Utc::now()),
        Some(text) => parse_policy_time(text).ok_or_else(|| {
            anyhow!(
                "`--at {text}` is not a date or time (e.g. 2026-06-01 or 2026-06-01T10:00:00+09:00)"
            )
        }),
    }
}

fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Loads and prints diagnostics; `None` when the bundle has errors.
fn load_reported(
    common: &CommonArgs,
    at: Instant,
    quiet_when_clean: bool,
) -> anyhow::Result<Option<Loaded>> {
    if !common.dir.is_dir() {
        bail!("`{}` is not a directory", common.dir.display());
    }
    let loaded = policy::load(&common.dir, at);
    let d = &loaded.diagnostics;
    if !(quiet_when_clean && d.all().is_empty() && common.format != Format::Json) {
        print!(
            "{}",
            d.render(&loaded.bundle.sources, common.format, color())
        );
    }
    Ok(loaded.is_valid().then_some(loaded))
}

fn check(a: &CommonArgs) -> anyhow::Result<u8> {
    let at = parse_at(a.at.as_deref())?;
    Ok(if load_reported(a, at, false)?.is_some() {
        EXIT_OK
    } else {
        EXIT_POLICY
    })
}

fn read_state(path: Option<&Path>) -> anyhow::Result<RuntimeState> {
    let Some(path) = path else {
        return Ok(RuntimeState::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading state file `{}`", path.display()))?;
    let mut sources = policy::source::Sources::default();
    let id = sources.add(policy::source::SourceFile::new(
        path.display().to_string(),
        text,
    ));
    let mut diags = Vec::new();
    let node = sources
        .get(id)
        .and_then(|f| policy::yaml::parse(id, f, &mut diags));
    let state =
        node.and_then(|n| policy::decode::runtime_state(&mut Decoder { diags: &mut diags }, &n));
    if !diags.is_empty() || state.is_none() {
        let mut ds = policy::diag::Diagnostics::default();
        ds.extend(diags);
        ds.finish(&sources);
        eprint!("{}", ds.render(&sources, Format::Plain, false));
        bail!("the state file `{}` is invalid", path.display());
    }
    Ok(state.unwrap_or_default())
}

fn compile(a: &CompileArgs) -> anyhow::Result<u8> {
    let at = parse_at(a.common.at.as_deref())?;
    let state = read_state(a.state.as_deref())?;
    let Some(loaded) = load_reported(&a.common, at, true)? else {
        return Ok(EXIT_POLICY);
    };
    let snapshot = Snapshot::compile(&loaded, at, &state)?;
    snapshot
        .export(&a.out)
        .with_context(|| format!("writing to `{}`", a.out.display()))?;
    println!(
        "compiled at {} → {}/model.conf, {}/policy.csv ({} rows), policy version {}",
        format_jst(at),
        a.out.display(),
        a.out.display(),
        snapshot.rows(),
        snapshot.version()
    );
    if let Some(next) = snapshot.facts().next_change {
        println!(
            "valid until {} (a grant, contract, emergency or lockdown starts or ends then)",
            format_jst(next)
        );
    }
    Ok(EXIT_OK)
}

fn diff_cmd(a: &DiffArgs) -> anyhow::Result<u8> {
    let at = parse_at(a.at.as_deref())?;
    let mut bundles = Vec::new();
    for dir in [&a.old, &a.new] {
        if !dir.is_dir() {
            bail!("`{}` is not a directory", dir.display());
        }
        let loaded = policy::load(dir, at);
        if !loaded.is_valid() {
            print!(
                "{}",
                loaded
                    .diagnostics
                    .render(&loaded.bundle.sources, Format::Plain, false)
            );
            println!("`{}` is invalid: it cannot go live", dir.display());
            return Ok(EXIT_POLICY);
        }
        bundles.push(loaded);
    }
    let (text, changes) = super::diff::diff(&bundles[0], &bundles[1], at)?;
    print!("{text}");
    println!(
        "{changes} change{} at {}",
        if changes == 1 { "" } else { "s" },
        format_jst(at)
    );
    Ok(EXIT_OK)
}

fn parse_action(text: &str) -> anyhow::Result<Action> {
    Action::parse(text).ok_or_else(|| {
        anyhow!(
            "unknown action `{}`; actions: {}",
            escape(text),
            Action::NAMES.join(", ")
        )
    })
}

fn explain(a: &ExplainArgs) -> anyhow::Result<u8> {
    let at = parse_at(a.common.at.as_deref())?;
    let state = read_state(a.state.as_deref())?;
    let Some(loaded) = load_reported(&a.common, at, true)? else {
        return Ok(EXIT_POLICY);
    };
    let snapshot = Snapshot::compile(&loaded, at, &state)?;
    let kind = SubjectKind::parse(a.kind.as_deref())
        .ok_or_else(|| anyhow!("`--kind` is `staff` or `contractor`"))?;
    let req = Request {
        system: a.system.clone(),
        subject: Subject::new(
            &a.sub,
            a.section.as_deref(),
            kind,
            a.contract.as_deref(),
            &a.amr,
        ),
        asset: a.asset.clone(),
        action: parse_action(&a.action)?,
        env: Env {
            device_issued: a.device_issued,
            purpose: a.purpose.clone(),
            break_glass_reason: a.break_glass_reason.clone(),
        },
    };
    let ex = snapshot.explain(&req);
    if a.common.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&ex)?);
    } else {
        print!("{}", render_explanation(&ex, at));
    }
    Ok(if ex.decision.allow {
        EXIT_OK
    } else {
        EXIT_DENIED
    })
}

fn render_explanation(ex: &Explanation, at: Instant) -> String {
    let d = &ex.decision;
    let mut out = String::new();
    out.push_str(&format!(
        "decision: {}  reason: {}\n",
        if d.allow { "ALLOW" } else { "DENY" },
        d.reason.as_str()
    ));
    out.push_str(&format!("  {}\n  {}\n", d.message_ja, d.message_en));
    if let Some(r) = &d.rule {
        match &r.source {
            Some(l) => out.push_str(&format!("rule: {} `{}` at {l}\n", r.kind, escape(&r.id))),
            None => out.push_str(&format!("rule: {} `{}`\n", r.kind, escape(&r.id))),
        }
    }
    if let Some(label) = &d.label {
        out.push_str(&format!("label: {label}\n"));
    }
    if !d.obligations.is_empty() {
        out.push_str(&format!(
            "obligations: {}\n",
            obligation_names(&d.obligations).join(", ")
        ));
    }
    out.push_str(&format!(
        "policy version: {}  (decided at {})\n",
        d.policy_version,
        format_jst(at)
    ));
    out.push_str("rules considered, in order:\n");
    for step in &ex.trace {
        out.push_str(&format!(
            "  {:<18} {}\n",
            step.reason.as_str(),
            if step.applies { "applies ←" } else { "no" }
        ));
    }
    out.push_str("casbin request (r):\n");
    let width = ex
        .casbin_request
        .fields()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0);
    for (name, value) in ex.casbin_request.fields() {
        let value = match value {
            CasbinValue::Text(t) => format!("\"{}\"", escape(&t)),
            CasbinValue::Flag(b) => b.to_string(),
        };
        out.push_str(&format!("  {name:<width$} {value}\n"));
    }
    out.push_str(&format!(
        "casbin decision: {}\n",
        match ex.casbin_allow {
            Some(true) => "allow",
            Some(false) => "deny",
            None => "error",
        }
    ));
    out
}

fn obligation_names(obligations: &[Obligation]) -> Vec<String> {
    obligations
        .iter()
        .map(|o| match o {
            Obligation::Label { text } => format!("label({text})"),
            other => other.name().to_string(),
        })
        .collect()
}

/// Compares a decision with a test's expectations; the list of mismatches.
pub fn mismatches(t: &TestCase, d: &Decision) -> Vec<String> {
    let mut out = Vec::new();
    let word = |b: bool| if b { "allow" } else { "deny" };
    if d.allow != t.expect_allow.value {
        out.push(format!(
            "expected {}, got {} ({})",
            word(t.expect_allow.value),
            word(d.allow),
            d.reason.as_str()
        ));
    }
    if let Some(r) = &t.reason {
        if r.value != d.reason.as_str() {
            out.push(format!(
                "expected reason `{}`, got `{}`",
                r.value,
                d.reason.as_str()
            ));
        }
    }
    if let Some(rule) = &t.rule {
        let got = d
            .rule
            .as_ref()
            .map(|r| r.id.to_string())
            .unwrap_or_default();
        if rule.value != got {
            out.push(format!(
                "expected rule `{}`, got `{}`",
                rule.value,
                if got.is_empty() { "(none)" } else { &got }
            ));
        }
    }
    if let Some(obl) = &t.obligations {
        let mut want: Vec<&str> = obl.value.iter().map(String::as_str).collect();
        let mut got: Vec<&str> = d.obligations.iter().map(Obligation::name).collect();
        want.sort_unstable();
        got.sort_unstable();
        if want != got {
            out.push(format!(
                "expected obligations [{}], got [{}]",
                want.join(", "),
                got.join(", ")
            ));
        }
    }
    out
}

fn test(a: &TestArgs) -> anyhow::Result<u8> {
    let default_at = parse_at(a.common.at.as_deref())?;
    let Some(loaded) = load_reported(&a.common, default_at, true)? else {
        return Ok(EXIT_POLICY);
    };
    let tests = &loaded.bundle.tests;
    let mut snapshots: Vec<(Instant, RuntimeState, Snapshot)> = Vec::new();
    let mut failed = 0usize;
    let mut cases = Vec::new();
    for t in tests {
        let at = t.at.unwrap_or(default_at);
        let pos = match snapshots
            .iter()
            .position(|(sat, sst, _)| *sat == at && *sst == t.state)
        {
            Some(p) => p,
            None => {
                let snap = Snapshot::compile(&loaded, at, &t.state)?;
                snapshots.push((at, t.state.clone(), snap));
                snapshots.len() - 1
            }
        };
        let Some((_, _, snap)) = snapshots.get(pos) else {
            continue;
        };
        let loc = loaded.bundle.sources.location(t.span);
        let problems = match Request::from_test_case(t) {
            Ok(req) => {
                let d = snap.decide_uncached(&req);
                cases.push(serde_json::json!({
                    "snapshot": pos, "name": t.name, "location": loc.to_string(),
                    "request": snap.casbin_request(&req), "allow": d.allow, "reason": d.reason.as_str(),
                }));
                mismatches(t, &d)
            }
            // A subject that could not hold a valid token is a deny before any rule.
            Err(why) if !t.expect_allow.value && t.reason.is_none() => {
                let _ = why;
                Vec::new()
            }
            Err(why) => vec![why],
        };
        if problems.is_empty() {
            if a.common.format == Format::Human {
                println!("ok    {}  ({loc})", escape(&t.name));
            }
        } else {
            failed += 1;
            println!("FAIL  {}  ({loc})", escape(&t.name));
            for p in problems {
                println!("      {}", escape(&p));
            }
        }
    }
    if let Some(dir) = &a.export_casbin {
        std::fs::create_dir_all(dir)?;
        for (i, (_, _, snap)) in snapshots.iter().enumerate() {
            snap.export(&dir.join(i.to_string()))?;
        }
        let mut f = std::fs::File::create(dir.join("cases.jsonl"))?;
        for c in &cases {
            writeln!(f, "{c}")?;
        }
    }
    let by_version: HashMap<&str, usize> =
        snapshots.iter().fold(HashMap::new(), |mut m, (_, _, s)| {
            *m.entry(&**s.version()).or_default() += 1;
            m
        });
    println!(
        "{} passed, {} failed ({} tests, {} snapshot{})",
        tests.len() - failed,
        failed,
        tests.len(),
        by_version.len(),
        if by_version.len() == 1 { "" } else { "s" }
    );
    Ok(if failed == 0 { EXIT_OK } else { EXIT_POLICY })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `policy explain` prints every field of the Casbin request, values in one column.
    #[test]
    fn the_casbin_request_is_printed_field_by_field_in_one_column() {
        let at = parse_policy_time("2026-06-01T12:00:00+09:00").expect("time");
        let loaded = policy::load(Path::new("policies"), at);
        let snap = Snapshot::compile(&loaded, at, &RuntimeState::default()).expect("compiles");
        let req = Request {
            system: "juki".into(),
            subject: Subject::new(
                "e1010",
                Some("shimin"),
                SubjectKind::Staff,
                None,
                &["pwd".into(), "fpt".into()],
            ),
            asset: "juki-main".into(),
            action: Action::Read,
            env: Env {
                device_issued: true,
                purpose: Some("jumin-kiroku".into()),
                break_glass_reason: None,
            },
        };
        let text = render_explanation(&snap.explain(&req), at);
        let (_, request) = text.split_once("casbin request (r):\n").expect("request");
        let lines: Vec<&str> = request
            .lines()
            .take_while(|l| l.starts_with("  "))
            .collect();
        let names: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(names, crate::engine::casbin_model::REQUEST_FIELDS);
        let columns: Vec<usize> = lines
            .iter()
            .map(|l| {
                l.len()
                    - l[2..]
                        .trim_start_matches(|c: char| c != ' ')
                        .trim_start()
                        .len()
            })
            .collect();
        assert!(columns.windows(2).all(|w| w[0] == w[1]), "{request}");
        assert!(text.contains("casbin decision: allow"), "{text}");
    }
}
