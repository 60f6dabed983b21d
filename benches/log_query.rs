//! Auditors' queries on a store of 10,000,000 records spread over one year (`RECORDS`
//! overrides): filtered pages, the next page, a single record, summaries.
//! `cargo bench --bench log_query`.
//!
//! Filling the store takes minutes, so it is kept in `target/bench-results/` and reused by
//! later runs of the same size (delete it to rebuild).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sekimori::audit::query::{Filter, SummaryBy};
use sekimori::audit::record::{AssetRef, Record, RecordKind, SubjectRef};
use sekimori::audit::store::Store;
use sekimori::audit::writer::INDEX_BATCH;
use std::time::Instant;

fn main() {
    let n: u64 = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-results");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("log-query-{n}.db"));
    let done = dir.join(format!("log-query-{n}.done"));
    let t0: i64 = 1_780_000_000_000_000;
    // One year, whatever the number of records.
    let step = 365 * 24 * 3600 * 1_000_000i64 / n as i64;
    let mut ids = Vec::new();
    if !done.exists() {
        let _ = std::fs::remove_file(&path);
        fill(&path, n, t0, step);
        std::fs::write(&done, "").unwrap();
    }
    let store = Store::open_read_only(&path).unwrap();
    // Every record is in the index (the queries below are the index's, not a scan).
    assert_eq!(store.index_lag().unwrap(), 0);
    for k in (0..n).step_by(100_000) {
        let row = store
            .query(
                &Filter {
                    from_us: Some(t0 + k as i64 * step),
                    ..Filter::default()
                },
                None,
                true,
                1,
            )
            .unwrap();
        ids.push(row[0].id.clone());
    }
    let time = |label: &str, f: &mut dyn FnMut() -> usize| {
        let mut best = f64::MAX;
        let mut got = 0;
        for _ in 0..5 {
            let t = Instant::now();
            got = f();
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        eprintln!("{label}: {got} rows, best of 5: {best:.2} ms");
    };
    let month = 30 * 24 * 3600 * 1_000_000i64;
    time("query sub=e00042, newest 100", &mut || {
        store
            .query(
                &Filter {
                    sub: Some("e00042".into()),
                    ..Filter::default()
                },
                None,
                false,
                100,
            )
            .unwrap()
            .len()
    });
    time("query section=s007 in one month, 100", &mut || {
        store
            .query(
                &Filter {
                    section: Some("s007".into()),
                    from_us: Some(t0 + 3 * month),
                    until_us: Some(t0 + 4 * month),
                    ..Filter::default()
                },
                None,
                true,
                100,
            )
            .unwrap()
            .len()
    });
    time("query asset=a000042 deny, 100", &mut || {
        store
            .query(
                &Filter {
                    asset: Some("a000042".into()),
                    decision: Some("deny".into()),
                    ..Filter::default()
                },
                None,
                false,
                100,
            )
            .unwrap()
            .len()
    });
    time("query reason=no_permission in one month, 100", &mut || {
        store
            .query(
                &Filter {
                    reason: Some("no_permission".into()),
                    from_us: Some(t0 + month),
                    until_us: Some(t0 + 2 * month),
                    ..Filter::default()
                },
                None,
                false,
                100,
            )
            .unwrap()
            .len()
    });
    let no_permission_in_month = Filter {
        reason: Some("no_permission".into()),
        from_us: Some(t0 + month),
        until_us: Some(t0 + 2 * month),
        ..Filter::default()
    };
    let first = store
        .query(&no_permission_in_month, None, false, 100)
        .unwrap();
    let cursor = first.last().map(|r| r.cursor());
    time(
        "query reason=no_permission in one month, next page of 100",
        &mut || {
            store
                .query(&no_permission_in_month, cursor, false, 100)
                .unwrap()
                .len()
        },
    );
    time("query decision=deny in one month, oldest 100", &mut || {
        store
            .query(
                &Filter {
                    decision: Some("deny".into()),
                    from_us: Some(t0 + 5 * month),
                    until_us: Some(t0 + 6 * month),
                    ..Filter::default()
                },
                None,
                true,
                100,
            )
            .unwrap()
            .len()
    });
    time("get one record by id", &mut || {
        usize::from(store.get(&ids[ids.len() / 2]).unwrap().is_some())
    });
    time("summary by day over one month", &mut || {
        store
            .summarize(
                &Filter {
                    from_us: Some(t0 + month),
                    until_us: Some(t0 + 2 * month),
                    ..Filter::default()
                },
                SummaryBy::Day,
            )
            .unwrap()
            .len()
    });
    time("summary by reason for one section", &mut || {
        store
            .summarize(
                &Filter {
                    section: Some("s007".into()),
                    ..Filter::default()
                },
                SummaryBy::Reason,
            )
            .unwrap()
            .len()
    });
}

/// Appends `n` records through the store's own append path, 10,000 per transaction.
fn fill(path: &std::path::Path, n: u64, t0: i64, step: i64) {
    let mut store = Store::open(path).unwrap();
    let mut head = store.head().unwrap();
    let started = Instant::now();
    let mut i = 0u64;
    while i < n {
        let batch: Vec<Record> = (i..(i + 10_000).min(n))
            .map(|k| {
                let mut r = Record::new(RecordKind::Decision);
                r.time_us = t0 + k as i64 * step;
                r.system = Some(format!("y{:04}", k % 500));
                r.subject = Some(SubjectRef {
                    sub: format!("e{:05}", k % 20_000),
                    section: Some(format!("s{:03}", k % 200)),
                    kind: "staff".into(),
                    contract: None,
                });
                r.asset = Some(AssetRef {
                    id: format!("a{:06}", k % 100_000),
                    tier: Some(["public", "internal", "secret"][(k % 3) as usize].into()),
                    ..AssetRef::default()
                });
                r.action = Some("read".into());
                r.decision = Some(if k % 7 == 0 { "deny" } else { "allow" }.into());
                r.reason = Some(if k % 7 == 0 { "no_permission" } else { "grant" }.into());
                r.policy_version = Some("sha256:0123456789abcdef".into());
                r
            })
            .collect();
        i += batch.len() as u64;
        head = store.append(head, &batch).unwrap();
    }
    eprintln!(
        "filled {n} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The service's indexer does this in the background; here, batch after batch.
    let started = Instant::now();
    while store.index_pending(INDEX_BATCH).unwrap() > 0 {}
    eprintln!(
        "indexed {n} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
