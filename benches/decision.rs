//! Decision latency at city scale (SPEC §11): a generated bundle of 200 sections, 500
//! systems, 100,000 assets, 20,000 staff and 50,000 grants; distinct requests.
//!
//! `cargo bench --bench decision` prints criterion's estimate and, before it, a histogram
//! over single decisions (median, p99) plus compile time and row count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{Criterion, criterion_group, criterion_main};
use sekimori::engine::{Env, Request, Snapshot, Subject, SubjectKind};
use sekimori::generate::{GenerateArgs, generate};
use sekimori::policy::model::{Action, AssetSelection, RuntimeState};
use sekimori::time::parse_policy_time;
use std::hint::black_box;
use std::time::Instant;

fn requests(loaded: &sekimori::policy::Loaded, n: usize) -> Vec<Request> {
    let b = &loaded.bundle;
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
        let system = b
            .assets
            .iter()
            .find(|a| a.id.value == asset)
            .map(|a| a.systems[0].value.clone())
            .unwrap();
        let (sub, section, kind, contract) = match (
            g.subjects.users.first(),
            g.subjects.sections.first(),
            g.subjects.contracts.first(),
        ) {
            (Some(u), _, _) => (
                u.value.clone(),
                Some(format!("s{:03}", i % 200)),
                SubjectKind::Staff,
                None,
            ),
            (_, Some(s), _) => (
                format!("e{:05}", i % 20_000),
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

fn city(c: &mut Criterion) {
    sample_reload();
    let dir = std::env::temp_dir().join("sekimori-bench-city");
    if !dir.join("organization.yaml").exists() {
        generate(&GenerateArgs {
            sections: 200,
            systems: 500,
            assets: 100_000,
            staff: 20_000,
            grants: 50_000,
            contracts: 300,
            seed: 1,
            out: dir.clone(),
        })
        .unwrap();
    }
    let at = parse_policy_time("2026-06-01T12:00:00+09:00").unwrap();
    let t = Instant::now();
    let loaded = sekimori::policy::load(&dir, at);
    let load = t.elapsed();
    assert!(loaded.is_valid());
    let t = Instant::now();
    let snap = Snapshot::compile(&loaded, at, &RuntimeState::default()).unwrap();
    let compile = t.elapsed();
    let reqs = requests(&loaded, 20_000);
    let mut lat: Vec<u128> = Vec::with_capacity(reqs.len());
    let mut allows = 0;
    for _ in 0..2 {
        lat.clear();
        for r in &reqs {
            let t = Instant::now();
            let d = snap.decide(black_box(r));
            lat.push(t.elapsed().as_nanos());
            allows += usize::from(d.allow);
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    eprintln!(
        "city: load+validate {load:?}, compile {compile:?}, {} casbin rows; decisions over {} distinct requests: median {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs ({} allows); disagreements {}",
        snap.rows(),
        reqs.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        allows / 2,
        snap.disagreements()
    );
    let mut i = 0;
    c.bench_function("decide/city-100k-assets-50k-grants", |b| {
        b.iter(|| {
            i = (i + 1) % reqs.len();
            black_box(snap.decide(black_box(&reqs[i])))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5));
    targets = city
}
criterion_main!(benches);
