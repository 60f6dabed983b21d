//! Decision latency at city scale (SPEC §11), against plain Casbin, and how cost grows.
//!
//! `cargo bench --bench decision` prints, before criterion's estimate:
//! - the sample city's reload cost;
//! - a scaling table — bundles generated at the sample city's size, 10×, 100× and the full
//!   city (200 sections, 500 systems, 100,000 assets, 20,000 staff, 50,000 grants): load,
//!   compile, memory held by the snapshot, decision median and p99 over distinct requests
//!   (a histogram over single decisions, not a mean) — also written as JSON to
//!   `target/bench-results/decision-scaling.json` for `scripts/plot_scaling.py`. These
//!   are the engine's figures: Casbin evaluates every request afresh
//!   (`Snapshot::decide_uncached`);
//! - the service's path through the snapshot's verdict cache (`Snapshot::decide`): each
//!   request the first time (its verdict not yet remembered), then again (remembered);
//! - the baseline: a plain casbin `Enforcer` (default role manager, `FileAdapter`) loaded
//!   with the city's exported `model.conf`/`policy.csv`, deciding the same requests;
//! - peak memory of the process (`VmHWM`).
//!
//! `BENCH_SCALES=1,10` limits the scaling table to some factors (the city is `city`).
//!
//! Decisions allocate (the Casbin request, rhai's scope, the answer), so the bench runs
//! with the allocator the `sekimori` binary uses (jemalloc, `src/main.rs`); glibc's malloc
//! adds about 0.4 µs per decision at city scale.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use sekimori::engine::{CasbinRequest, Env, Request, Snapshot, Subject, SubjectKind};
use sekimori::generate::{GenerateArgs, generate};
use sekimori::policy::model::{Action, AssetSelection, RuntimeState};
use sekimori::time::parse_policy_time;
use std::hint::black_box;
use std::time::Instant;

/// Distinct requests drawn from the bundle's grants: named, section and contract subjects,
/// every action, some from unmanaged devices; about a third are allowed.
fn requests(loaded: &sekimori::policy::Loaded, n: usize, size: &GenerateArgs) -> Vec<Request> {
    let b = &loaded.bundle;
    let first_system: std::collections::HashMap<&str, &str> = b
        .assets
        .iter()
        .map(|a| (a.id.value.as_str(), a.systems[0].value.as_str()))
        .collect();
    let mut out = Vec::with_capacity(n);
    let mut i = 0usize;
    while out.len() < n {
        let g = &b.grants[(i * 7919) % b.grants.len()];
        let asset = match &g.assets {
            AssetSelection::List(ids) => ids[i % ids.len()].value.clone(),
            AssetSelection::Select { .. } => {
                b.assets[(i * 104_729) % b.assets.len()].id.value.clone()
            }
        };
        let system = first_system[asset.as_str()].to_string();
        let (sub, section, kind, contract) = match (
            g.subjects.users.first(),
            g.subjects.sections.first(),
            g.subjects.contracts.first(),
        ) {
            (Some(u), _, _) => (
                u.value.clone(),
                Some(format!("s{:03}", i % size.sections)),
                SubjectKind::Staff,
                None,
            ),
            (_, Some(s), _) => (
                format!("e{:05}", i % size.staff),
                Some(s.value.clone()),
                SubjectKind::Staff,
                None,
            ),
            (_, _, Some(c)) => (
                format!("x{i}"),
                None,
                SubjectKind::Contractor,
                Some(c.value.clone()),
            ),
            _ => unreachable!(),
        };
        let action = Action::ALL[i % 8];
        out.push(Request {
            system,
            subject: Subject::new(
                &sub,
                section.as_deref(),
                kind,
                contract.as_deref(),
                &["pwd".into(), "fpt".into()],
            ),
            asset,
            action,
            env: Env {
                device_issued: i % 10 != 0,
                purpose: Some("jimu-a".into()),
                break_glass_reason: None,
            },
        });
        i += 1;
    }
    out
}

/// What a reload costs for the sample city: read + validate, then compile + swap.
fn sample_reload() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let at = parse_policy_time("2026-06-01T12:00:00+09:00").unwrap();
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..20 {
        let t = Instant::now();
        let loaded = sekimori::policy::load(&dir, at);
        let load = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        let snap = Snapshot::compile(&loaded, at, &RuntimeState::default()).unwrap();
        let compile = t.elapsed().as_secs_f64() * 1000.0;
        black_box(snap);
        best = (best.0.min(load), best.1.min(compile));
    }
    eprintln!(
        "sample city reload: load+validate {:.2} ms, compile {:.2} ms (best of 20)",
        best.0, best.1
    );
}

/// The generator's arguments for a bundle `factor` times the sample city (47 assets, 24
/// grants, 14 sections), or the full city for `None`.
fn size(factor: Option<usize>, out: std::path::PathBuf) -> GenerateArgs {
    match factor {
        Some(f) => GenerateArgs {
            sections: (14 * f).min(200),
            systems: (12 * f).min(500),
            assets: 47 * f,
            staff: 60 * f,
            grants: 24 * f,
            contracts: 5 * f,
            seed: 1,
            out,
        },
        None => GenerateArgs {
            sections: 200,
            systems: 500,
            assets: 100_000,
            staff: 20_000,
            grants: 50_000,
            contracts: 300,
            seed: 1,
            out,
        },
    }
}

/// Generates the bundle once per size (kept in the temp dir between runs).
fn bundle(name: &str, factor: Option<usize>) -> GenerateArgs {
    let dir = std::env::temp_dir().join(format!("sekimori-bench-{name}"));
    let args = size(factor, dir.clone());
    if !dir.join("organization.yaml").exists() {
        generate(&args).unwrap();
    }
    args
}

/// Resident and peak resident memory of this process, in bytes (Linux `/proc`).
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[derive(Clone, Copy)]
struct Percentiles {
    median: f64,
    p99: f64,
    p999: f64,
}

/// Times every call separately, twice over `n` inputs (the first pass warms caches), and
/// returns the second pass's percentiles in microseconds.
fn histogram<T>(inputs: &[T], call: impl FnMut(&T) -> bool) -> (Percentiles, usize) {
    passes(inputs, 2, call)
}

/// Times every call separately over `n` inputs, `times` times over, and returns the last
/// pass's percentiles in microseconds.
fn passes<T>(inputs: &[T], times: usize, mut call: impl FnMut(&T) -> bool) -> (Percentiles, usize) {
    let mut lat: Vec<u128> = Vec::with_capacity(inputs.len());
    let mut yes = 0;
    for _ in 0..times {
        lat.clear();
        yes = 0;
        for x in inputs {
            let t = Instant::now();
            let r = call(black_box(x));
            lat.push(t.elapsed().as_nanos());
            yes += usize::from(r);
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    (
        Percentiles {
            median: pct(0.5),
            p99: pct(0.99),
            p999: pct(0.999),
        },
        yes,
    )
}

struct Scaled {
    snap: Snapshot,
    reqs: Vec<Request>,
}

/// Loads, compiles and measures one bundle; prints its row and returns its JSON object.
fn scale_row(
    name: &str,
    factor: Option<usize>,
    at: sekimori::time::Instant,
) -> (Scaled, serde_json::Value) {
    let args = bundle(name, factor);
    let (rss0, _) = memory();
    let t = Instant::now();
    let loaded = sekimori::policy::load(&args.out, at);
    let load = t.elapsed();
    assert!(
        loaded.is_valid(),
        "{name}: the generated bundle must be valid"
    );
    let t = Instant::now();
    let snap = Snapshot::compile(&loaded, at, &RuntimeState::default()).unwrap();
    let compile = t.elapsed();
    let reqs = requests(&loaded, 20_000, &args);
    drop(loaded);
    let (rss1, _) = memory();
    // The service's path first, while the snapshot remembers no verdict: after a pass that
    // warms the CPU's caches (Casbin evaluating afresh), each distinct request is decided
    // once with its verdict not yet remembered, then once more with it remembered.
    let _ = passes(&reqs, 1, |r| snap.decide_uncached(r).allow);
    let (miss, _) = passes(&reqs, 1, |r| snap.decide(r).allow);
    let (hit, _) = passes(&reqs, 1, |r| snap.decide(r).allow);
    // The engine: every decision evaluated by Casbin afresh (the SPEC §11 figure).
    let (p, allows) = histogram(&reqs, |r| snap.decide_uncached(r).allow);
    let held = rss1.saturating_sub(rss0) as f64 / (1024.0 * 1024.0);
    eprintln!(
        "scale {name:>5}: {} assets, {} grants, {} casbin rows; load+validate {:.3} s, compile {:.3} s, snapshot ≈ {held:.0} MiB; decision median {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs ({allows} of {} allowed); disagreements {}",
        args.assets,
        args.grants,
        snap.rows(),
        load.as_secs_f64(),
        compile.as_secs_f64(),
        p.median,
        p.p99,
        p.p999,
        reqs.len(),
        snap.disagreements()
    );
    eprintln!(
        "scale {name:>5}: through the verdict cache, first sight median {:.2} µs, p99 {:.2} µs; remembered median {:.2} µs, p99 {:.2} µs",
        miss.median, miss.p99, hit.median, hit.p99
    );
    let json = serde_json::json!({
        "cache_miss_median_us": miss.median, "cache_miss_p99_us": miss.p99,
        "cache_hit_median_us": hit.median, "cache_hit_p99_us": hit.p99,
        "scale": name, "assets": args.assets, "grants": args.grants, "rows": snap.rows(),
        "load_s": load.as_secs_f64(), "compile_s": compile.as_secs_f64(),
        "snapshot_mib": held, "median_us": p.median, "p99_us": p.p99, "p999_us": p.p999,
    });
    (Scaled { snap, reqs }, json)
}

/// The baseline: plain casbin, as anyone would run it, over the city's exported files.
fn plain_casbin(city: &Scaled) -> serde_json::Value {
    use casbin::{CoreApi, Enforcer};
    let dir = std::env::temp_dir().join("sekimori-bench-city-export");
    city.snap.export(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let enforcer = rt
        .block_on(async {
            let model = casbin::DefaultModel::from_file(dir.join("model.conf")).await?;
            let adapter = casbin::FileAdapter::new(dir.join("policy.csv"));
            Enforcer::new(model, adapter).await
        })
        .unwrap();
    let load = t.elapsed();
    let tuples: Vec<CasbinRequest> = city
        .reqs
        .iter()
        .map(|r| city.snap.casbin_request(r))
        .collect();
    // Same answers as sekimori's (the explainer agrees with Casbin on every request).
    for (tuple, req) in tuples.iter().zip(&city.reqs).take(2_000) {
        let plain = enforcer.enforce(tuple.values().to_vec()).unwrap();
        assert_eq!(
            plain,
            city.snap.decide_uncached(req).allow,
            "plain casbin disagrees"
        );
    }
    let (p, _) = histogram(&tuples, |t| enforcer.enforce(t.values().to_vec()).unwrap());
    let (ours, _) = histogram(&city.reqs, |r| city.snap.decide_uncached(r).allow);
    eprintln!(
        "baseline plain casbin Enforcer (default role manager, FileAdapter) on the city's export: load {:.2} s; decision median {:.2} µs, p99 {:.2} µs — sekimori in the same run: median {:.2} µs, p99 {:.2} µs (ratio {:.2}×)",
        load.as_secs_f64(),
        p.median,
        p.p99,
        ours.median,
        ours.p99,
        p.median / ours.median
    );
    serde_json::json!({
        "load_s": load.as_secs_f64(), "median_us": p.median, "p99_us": p.p99,
        "sekimori_median_us": ours.median, "sekimori_p99_us": ours.p99,
    })
}

/// What bounds a decision: casbin-rs's cost per `enforce` with the same request
/// and one policy row, for a trivial matcher, one `g()` call, and one string comparison.
fn casbin_floor(snap: &Snapshot, reqs: &[Request]) -> serde_json::Value {
    use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi};
    let tuples: Vec<CasbinRequest> = reqs.iter().map(|r| snap.casbin_request(r)).collect();
    let field = |name: &str| {
        sekimori::engine::casbin_model::REQUEST_FIELDS
            .iter()
            .position(|f| *f == name)
            .unwrap()
    };
    let (sys, obj) = (field("sys"), field("obj"));
    let mut out = serde_json::Map::new();
    for (label, matcher) in [
        ("trivial", "p.eft == \"allow\""),
        ("one g()", "g(r.sys, \"holder\", r.obj)"),
        (
            "five g()",
            "g(r.sys, \"a\", r.obj) || g(r.sys, \"b\", r.obj) || g(r.sys, \"c\", r.obj) || g(r.sys, \"d\", r.obj) || g(r.sys, \"holder\", r.obj)",
        ),
        (
            "five comparisons",
            "r.act == \"a\" || r.act == \"b\" || r.act == \"c\" || r.act == \"d\" || r.act != \"e\"",
        ),
    ] {
        let request = sekimori::engine::casbin_model::REQUEST_FIELDS.join(", ");
        let conf = format!(
            "[request_definition]\nr = {request}\n[policy_definition]\np = eft\n[role_definition]\ng = _, _, _\n[policy_effect]\ne = some(where (p.eft == allow))\n[matchers]\nm = {matcher}\n"
        );
        let model = pollster::block_on(DefaultModel::from_str(&conf)).unwrap();
        let mut e = pollster::block_on(Enforcer::new(model, MemoryAdapter::default())).unwrap();
        pollster::block_on(e.add_policy(vec!["allow".into()])).unwrap();
        let text = |t: &CasbinRequest, i: usize| t.values()[i].clone().into_string().unwrap();
        let mut links: Vec<Vec<String>> = tuples
            .iter()
            .map(|t| vec![text(t, sys), "holder".into(), text(t, obj)])
            .collect();
        links.sort();
        links.dedup();
        pollster::block_on(e.add_named_grouping_policies("g", links)).unwrap();
        let (p, yes) = histogram(&tuples, |t| e.enforce(t.values().to_vec()).unwrap());
        assert!(yes > 0);
        eprintln!(
            "casbin-rs floor, {label}: median {:.2} µs, p99 {:.2} µs",
            p.median, p.p99
        );
        out.insert(
            label.into(),
            serde_json::json!({"median_us": p.median, "p99_us": p.p99}),
        );
    }
    serde_json::Value::Object(out)
}

/// Whether independent decisions scale across cores: the same requests decided by one
/// thread, then split over two (no lock is taken on the decision path; the snapshot is
/// shared read-only).
fn two_cores(city: &Scaled) -> serde_json::Value {
    let rate = |threads: usize| {
        let per = city.reqs.len() / threads;
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let reqs = &city.reqs[t * per..(t + 1) * per];
                let snap = &city.snap;
                s.spawn(move || {
                    for _ in 0..5 {
                        for r in reqs {
                            black_box(snap.decide_uncached(black_box(r)));
                        }
                    }
                });
            }
        });
        (per * threads * 5) as f64 / started.elapsed().as_secs_f64()
    };
    let one = rate(1);
    let two = rate(2);
    eprintln!(
        "decisions per second: one thread {one:.0}, two threads {two:.0} (×{:.2} on this 2-core machine)",
        two / one
    );
    serde_json::json!({"one_thread_per_s": one, "two_threads_per_s": two})
}

fn city(c: &mut Criterion) {
    sample_reload();
    let at = parse_policy_time("2026-06-01T12:00:00+09:00").unwrap();
    let wanted = std::env::var("BENCH_SCALES").unwrap_or_else(|_| "1,10,100,city".into());
    let mut rows = Vec::new();
    for (name, factor) in [
        ("1", Some(1)),
        ("10", Some(10)),
        ("100", Some(100)),
        ("city", None),
    ] {
        if wanted.split(',').any(|w| w.trim() == name) && name != "city" {
            let (scaled, json) = scale_row(name, factor, at);
            drop(scaled);
            rows.push(json);
        }
    }
    let (city, json) = scale_row("city", None, at);
    rows.push(json);
    let baseline = plain_casbin(&city);
    let floor = casbin_floor(&city.snap, &city.reqs);
    let cores = two_cores(&city);
    let (_, peak) = memory();
    eprintln!(
        "peak resident memory of the process (VmHWM): {:.0} MiB",
        peak as f64 / (1024.0 * 1024.0)
    );
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&out).unwrap();
    let report = serde_json::json!({
        "scales": rows, "plain_casbin": baseline, "casbin_floor": floor, "two_cores": cores,
        "peak_rss_mib": peak as f64 / (1024.0 * 1024.0),
    });
    std::fs::write(
        out.join("decision-scaling.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    let reqs = &city.reqs;
    let snap = &city.snap;
    let mut i = 0;
    c.bench_function("decide/city-100k-assets-50k-grants", |b| {
        b.iter(|| {
            i = (i + 1) % reqs.len();
            black_box(snap.decide_uncached(black_box(&reqs[i])))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = city
}
criterion_main!(benches);
