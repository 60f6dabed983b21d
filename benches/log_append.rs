//! Decision-log throughput: records committed per second with fsync under concurrent
//! callers (each waiting for its own record, as Check does), how far the auditors' index
//! (filled in the background) is behind at the end and how long it takes to catch up,
//! and verification speed.
//! `cargo bench --bench log_append` (RECORDS, CALLERS env vars override the defaults).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sekimori::audit::checkpoint::Signer;
use sekimori::audit::record::{AssetRef, EnvRef, Record, RecordKind, SubjectRef};
use sekimori::audit::store::Store;
use sekimori::audit::writer::{CheckpointPolicy, LogWriter};
use std::sync::atomic::Ordering;
use std::time::Instant;

fn record(i: u64) -> Record {
    let mut r = Record::new(RecordKind::Decision);
    r.system = Some("juki".into());
    r.subject = Some(SubjectRef {
        sub: format!("e{:05}", i % 20_000),
        section: Some("shimin".into()),
        kind: "staff".into(),
        contract: None,
    });
    r.asset = Some(AssetRef {
        id: format!("a{:06}", i % 100_000),
        owner: Some("shimin".into()),
        confidentiality: Some("2".into()),
        integrity: Some("1".into()),
        availability: Some("1".into()),
        tier: Some("internal".into()),
        my_number: Some(false),
    });
    r.action = Some("read".into());
    r.env = Some(EnvRef {
        device_issued: true,
        purpose: None,
        break_glass_reason: None,
    });
    r.decision = Some("allow".into());
    r.reason = Some("grant".into());
    r.rule = Some(format!("g{:06}", i % 50_000));
    r.policy_version = Some("sha256:0123456789abcdef".into());
    r
}

fn main() {
    let records: u64 = std::env::var("RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let callers: u64 = std::env::var("CALLERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let dir =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into())).unwrap();
    let path = dir.path().join("bench.db");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let signer = Signer::from_pem(&key.serialize_pem(), "bench").unwrap();
    let public = signer.public_key();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let writer = LogWriter::start(&path, Some(signer), CheckpointPolicy::default()).unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..callers {
            let w = writer.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = c;
                while i < records {
                    w.append(vec![record(i)]).await.unwrap();
                    i += callers;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let commits = writer.stats.commits.load(Ordering::Relaxed);
    // The WAL stays bounded under unbroken load (the checkpointer and the writer's own
    // checkpoint at 16 MiB): its size at the end of the run.
    let wal = std::fs::metadata(dir.path().join("bench.db-wal")).map_or(0, |m| m.len());
    eprintln!(
        "WAL at the end of the run: {:.1} MiB",
        wal as f64 / (1024.0 * 1024.0)
    );
    eprintln!(
        "append: {records} records by {callers} concurrent callers, each awaiting its own fsync'd commit: {:.0} records/s, {commits} commits (mean group {:.1})",
        records as f64 / secs,
        records as f64 / commits.max(1) as f64
    );
    // The indexer runs beside the writer: what it had indexed when the last commit was
    // answered, and when it caught up.
    let indexed = writer.stats.indexed_seq.load(Ordering::Relaxed);
    while writer.stats.indexed_seq.load(Ordering::Relaxed) < records {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let caught_up = started.elapsed().as_secs_f64();
    eprintln!(
        "index: {indexed} of {records} records indexed when the last commit was answered; all indexed after {caught_up:.1} s ({:.0} records/s end to end)",
        records as f64 / caught_up
    );
    drop(writer);
    let store = Store::open_read_only(&path).unwrap();
    let started = Instant::now();
    let report = sekimori::audit::verify::verify(&store, Some(&public), None, |_| {}).unwrap();
    let secs = started.elapsed().as_secs_f64();
    assert!(report.ok(), "{:?}", report.problem);
    eprintln!(
        "verify: {} records, {} checkpoints with signatures, {:.0} records/s",
        report.records,
        report.checkpoints,
        report.records as f64 / secs
    );
}
