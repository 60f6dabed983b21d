//! The decision log: tamper evidence (each way of tampering named at the right record) and
//! durability across `kill -9` of a real server process.

use crate::support::repo;
use sekimori::audit::checkpoint::Signer;
use sekimori::audit::record::{Record, RecordKind, chain_hash};
use sekimori::audit::store::{Checkpoint, Head, Store};
use sekimori::audit::verify::verify;
use std::path::Path;

const N: u64 = 100;
const EVERY: u64 = 25;

fn signer() -> (Signer, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let s = Signer::from_pem(&key.serialize_pem(), "test").unwrap();
    let public = s.public_key();
    (s, public)
}

/// A store of N decision records with a signed checkpoint every EVERY records.
fn build(dir: &Path) -> (Store, Vec<u8>) {
    let (signer, public) = signer();
    let mut store = Store::open(&dir.join("log.db")).unwrap();
    let mut head = store.head().unwrap();
    for batch in 0..(N / EVERY) {
        let records: Vec<Record> = (0..EVERY)
            .map(|i| {
                let mut r = Record::new(RecordKind::Decision);
                r.system = Some("juki".into());
                r.reason = Some(format!("grant-{}", batch * EVERY + i));
                r
            })
            .collect();
        head = store.append(head, &records).unwrap();
        store
            .add_checkpoint(&signer.sign(head, 1_780_000_000_000_000))
            .unwrap();
    }
    (store, public)
}

fn sql(store: &Store, statement: &str) {
    store.connection().execute_batch(statement).unwrap();
}

/// What `verify --index` finds wrong with the query columns and the index, if anything.
fn columns_problem(store: &Store) -> Option<sekimori::audit::verify::Problem> {
    sekimori::audit::verify::verify_columns(store, |_| {})
        .unwrap()
        .problem
}

/// The single number a query gives.
fn count(store: &Store, query: &str) -> i64 {
    store
        .connection()
        .query_row(query, [], |r| r.get(0))
        .unwrap()
}

fn first_bad(store: &Store, key: &[u8], external: Option<&Checkpoint>) -> Option<(u64, String)> {
    verify(store, Some(key), external, |_| {})
        .unwrap()
        .problem
        .map(|p| (p.seq, p.what))
}

/// The wall clock stepping back and forth (NTP, a resumed VM): records keep the time they
/// were made with, the sequence stays gap-free and in append order, the chain verifies, and
/// time-ordered queries page through every record exactly once.
#[test]
fn a_clock_stepping_back_and_forth_keeps_sequence_order_and_the_chain() {
    use sekimori::audit::query::Filter;
    let dir = tempfile::tempdir().unwrap();
    let (signer, key) = signer();
    let mut store = Store::open(&dir.path().join("log.db")).unwrap();
    let mut head = store.head().unwrap();
    let t0: i64 = 1_780_000_000_000_000;
    let hour = 3_600_000_000i64;
    // Forward, an hour back, forward a day, back two days, and two records at one instant.
    let times = [
        t0,
        t0 + 1,
        t0 - hour,
        t0 - hour + 1,
        t0 + 24 * hour,
        t0 - 48 * hour,
        t0,
        t0,
    ];
    for (i, t) in times.iter().enumerate() {
        let mut r = Record::new(RecordKind::Decision);
        r.time_us = *t;
        r.reason = Some(format!("r{i}"));
        head = store.append(head, &[r]).unwrap();
    }
    store.add_checkpoint(&signer.sign(head, t0)).unwrap();
    let report = verify(&store, Some(&key), None, |_| {}).unwrap();
    assert!(report.ok(), "{:?}", report.problem);
    assert_eq!(report.records, times.len() as u64);
    // Append order is sequence order, whatever the clock said.
    let by_seq: Vec<(u64, i64)> = {
        let mut stmt = store
            .connection()
            .prepare("SELECT seq, time_us FROM records ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let seqs: Vec<u64> = by_seq.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=times.len() as u64).collect::<Vec<_>>());
    assert_eq!(by_seq.iter().map(|(_, t)| *t).collect::<Vec<_>>(), times);
    // Pages of two, newest first then oldest first: every record once, in time order.
    for oldest_first in [false, true] {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .query(&Filter::default(), cursor, oldest_first, 2)
                .unwrap();
            if page.is_empty() {
                break;
            }
            cursor = page.last().map(|r| r.cursor());
            seen.extend(page.iter().map(|r| (r.time_us, r.seq)));
        }
        let mut expected: Vec<(i64, u64)> = by_seq.iter().map(|(s, t)| (*t, *s)).collect();
        expected.sort_unstable();
        if !oldest_first {
            expected.reverse();
        }
        assert_eq!(seen, expected, "oldest_first = {oldest_first}");
    }
}

#[test]
fn an_intact_log_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = build(dir.path());
    let report = verify(&store, Some(&key), None, |_| {}).unwrap();
    assert!(report.ok(), "{:?}", report.problem);
    assert_eq!(report.records, N);
    assert_eq!(report.checkpoints, (N / EVERY) as usize);
}

#[test]
fn one_changed_byte_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = build(dir.path());
    // Flip one character of record 37's reason inside its stored bytes.
    sql(
        &store,
        "UPDATE records SET body = CAST(REPLACE(CAST(body AS TEXT), 'grant-36', 'grant-3X') AS BLOB) WHERE seq = 37",
    );
    assert_eq!(first_bad(&store, &key, None).unwrap().0, 37);
}

#[test]
fn a_deleted_row_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = build(dir.path());
    sql(&store, "DELETE FROM records WHERE seq = 50");
    let (seq, what) = first_bad(&store, &key, None).unwrap();
    assert_eq!(seq, 50, "{what}");
    assert!(what.contains("missing"), "{what}");
}

#[test]
fn two_swapped_rows_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = build(dir.path());
    sql(
        &store,
        "UPDATE records SET seq = -20 WHERE seq = 20; UPDATE records SET seq = 20 WHERE seq = 21; UPDATE records SET seq = 21 WHERE seq = -20;",
    );
    assert_eq!(first_bad(&store, &key, None).unwrap().0, 20);
}

#[test]
fn a_truncated_tail_is_named_by_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = build(dir.path());
    sql(&store, "DELETE FROM records WHERE seq > 90");
    assert_eq!(first_bad(&store, &key, None).unwrap().0, 91);
}

#[test]
fn a_truncated_tail_with_its_checkpoints_removed_is_caught_by_an_exported_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = build(dir.path());
    let exported = store.checkpoints().unwrap().pop().unwrap();
    sql(
        &store,
        "DELETE FROM records WHERE seq > 90; DELETE FROM checkpoints WHERE seq > 90;",
    );
    assert!(
        first_bad(&store, &key, None).is_none(),
        "without a copy kept elsewhere this is undetectable"
    );
    assert_eq!(first_bad(&store, &key, Some(&exported)).unwrap().0, 91);
}

/// Rewrites record `from` and re-chains every later record: the hashes are consistent again,
/// but no one without the key can sign a checkpoint over them.
fn rechain(store: &Store, from: u64) {
    sql(
        store,
        &format!(
            "UPDATE records SET body = CAST(REPLACE(CAST(body AS TEXT), 'grant-{}', 'grant-XX') AS BLOB) WHERE seq = {from}",
            from - 1
        ),
    );
    let prev: Vec<u8> = store
        .connection()
        .query_row(
            "SELECT hash FROM records WHERE seq = ?1",
            [(from - 1) as i64],
            |r| r.get(0),
        )
        .unwrap();
    let mut prev: [u8; 32] = prev.try_into().unwrap();
    for seq in from..=N {
        let body: Vec<u8> = store
            .connection()
            .query_row(
                "SELECT body FROM records WHERE seq = ?1",
                [seq as i64],
                |r| r.get(0),
            )
            .unwrap();
        let h = chain_hash(&prev, &body);
        store
            .connection()
            .execute(
                "UPDATE records SET hash = ?1 WHERE seq = ?2",
                rusqlite::params![h.as_slice(), seq as i64],
            )
            .unwrap();
        prev = h;
    }
}

#[test]
fn a_tail_rechained_without_the_key_is_named_by_its_checkpoint_range() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = build(dir.path());
    rechain(&store, 80);
    let (seq, what) = first_bad(&store, &key, None).unwrap();
    // The last checkpoint that still holds is at 75: records 76..=100 cannot be trusted.
    assert_eq!(seq, 76, "{what}");
    assert!(what.contains("76..=100"), "{what}");
}

#[test]
fn a_rechained_tail_with_forged_checkpoints_fails_their_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = build(dir.path());
    rechain(&store, 80);
    let (forger, _) = signer();
    let hash: Vec<u8> = store
        .connection()
        .query_row("SELECT hash FROM records WHERE seq = 100", [], |r| r.get(0))
        .unwrap();
    let forged = forger.sign(
        Head {
            seq: 100,
            hash: hash.try_into().unwrap(),
        },
        1_780_000_000_000_001,
    );
    store.add_checkpoint(&forged).unwrap();
    let (seq, what) = first_bad(&store, &key, None).unwrap();
    assert_eq!(seq, 100, "{what}");
    assert!(what.contains("signature"), "{what}");
}

#[test]
fn verify_cli_exits_4_and_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = build(dir.path());
    let key_file = dir.path().join("key.pub");
    std::fs::write(
        &key_file,
        sekimori::audit::checkpoint::encode_public_key(&key),
    )
    .unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sekimori"))
            .args(["audit", "verify", "--db"])
            .arg(dir.path().join("log.db"))
            .arg("--public-key")
            .arg(&key_file)
            .output()
            .unwrap()
    };
    let ok = run();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("OK"));
    sql(&store, "DELETE FROM records WHERE seq = 42");
    let bad = run();
    assert_eq!(bad.status.code(), Some(4));
    assert!(
        String::from_utf8_lossy(&bad.stdout).contains("first bad record: 42"),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn spawn_server(data: &Path, port: u16) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_sekimori"))
        .args([
            "serve",
            "--dev",
            "--metrics",
            "off",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
        ])
        .arg(data)
        .arg("--policies")
        .arg(repo().join("policies"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

pub(crate) async fn client(
    data: &Path,
    port: u16,
) -> Option<sekimori::server::proto::access_client::AccessClient<tonic::transport::Channel>> {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    let p = sekimori::devpki::DevPaths::new(data);
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(p.ca_cert()).ok()?))
        .identity(Identity::from_pem(
            std::fs::read(p.client_cert("juki")).ok()?,
            std::fs::read(p.client_key("juki")).ok()?,
        ))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .ok()?
        .tls_config(tls)
        .ok()?
        .connect()
        .await
        .ok()?;
    Some(sekimori::server::proto::access_client::AccessClient::new(
        channel,
    ))
}

pub(crate) async fn wait_for(
    data: &Path,
    port: u16,
) -> sekimori::server::proto::access_client::AccessClient<tonic::transport::Channel> {
    for _ in 0..200 {
        if let Some(c) = client(data, port).await {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the server did not come up");
}

/// Every decision a client received is in the log after `kill -9`, and the chain verifies:
/// 20 rounds (`SEKIMORI_KILL_ROUNDS` overrides) on the same data directory, each killing the
/// server at a different moment under four concurrent callers, each restart recovering the
/// log the previous kill left.
#[tokio::test]
async fn answered_decisions_survive_kill_9() {
    let rounds: u64 = std::env::var("SEKIMORI_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let data = tempfile::tempdir().unwrap();
    let mut answered_in_all = 0usize;
    for round in 0..rounds {
        let port = free_port();
        let mut child = spawn_server(data.path(), port);
        let c = wait_for(data.path(), port).await;
        let key = std::fs::read_to_string(sekimori::devpki::DevPaths::new(data.path()).token_key())
            .unwrap();
        let token = sekimori::devpki::sign_token(
            &key,
            &sekimori::devpki::TokenClaims {
                sub: "e1010".into(),
                section: Some("shimin".into()),
                amr: vec!["pwd".into(), "fpt".into()],
                ttl_secs: 600,
                ..Default::default()
            },
        )
        .unwrap();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut c = c.clone();
            let token = token.clone();
            let received = received.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..10_000 {
                    let req = sekimori::server::proto::CheckRequest {
                        subject_token: token.clone(),
                        asset: "juki-tokei".into(),
                        action: "read".into(),
                        env: None,
                        request_id: String::new(),
                    };
                    match c.check(req).await {
                        Ok(r) => received
                            .lock()
                            .unwrap()
                            .push(r.into_inner().decision.unwrap().decision_id),
                        Err(_) => break,
                    }
                }
            }));
        }
        // A different moment each round: 50–950 ms after the first answer (counted from
        // the first answer, not the first call, so that a busy machine that answers late
        // still kills under load).
        let started = std::time::Instant::now();
        while received.lock().unwrap().is_empty()
            && started.elapsed() < std::time::Duration::from_secs(20)
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50 + (round * 7_919) % 900)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        let received = received.lock().unwrap().clone();
        assert!(
            !received.is_empty(),
            "round {round}: no decision was answered before the kill"
        );
        let store = Store::open_read_only(&data.path().join("decisions.db")).unwrap();
        for id in &received {
            assert!(
                store.contains(id).unwrap(),
                "round {round}: answered decision {id} is not in the log"
            );
        }
        let report = verify(&store, None, None, |_| {}).unwrap();
        assert!(report.ok(), "round {round}: {:?}", report.problem);
        answered_in_all += received.len();
    }
    eprintln!("kill -9: {rounds} rounds, {answered_in_all} answered decisions, all in the log");
}

/// A store whose record i (1-based) is stamped at second i.
fn build_timed(dir: &Path) -> (Store, Vec<u8>) {
    let (signer, public) = signer();
    let mut store = Store::open(&dir.join("log.db")).unwrap();
    let mut head = store.head().unwrap();
    for batch in 0..(N / EVERY) {
        let records: Vec<Record> = (1..=EVERY)
            .map(|i| {
                let mut r = Record::new(RecordKind::Decision);
                r.time_us = ((batch * EVERY + i) * 1_000_000) as i64;
                r
            })
            .collect();
        head = store.append(head, &records).unwrap();
        store.add_checkpoint(&signer.sign(head, 0)).unwrap();
    }
    (store, public)
}

#[test]
fn archiving_keeps_both_halves_verifiable() {
    use sekimori::audit::query::Filter;
    let dir = tempfile::tempdir().unwrap();
    let (mut store, key) = build_timed(dir.path());
    // Records 1..=70 are indexed in two batches, the rest are read from the log.
    store.set_min_batch(1);
    assert_eq!(store.index_pending(40).unwrap(), 40);
    assert_eq!(store.index_pending(30).unwrap(), 30);
    let archive = dir.path().join("archive.jsonl");
    // Records 1..=59 are older than second 60; the last checkpoint among them is at 50.
    let r = sekimori::audit::archive::archive(&store, 60_000_000, &archive).unwrap();
    assert_eq!((r.from_seq, r.to_seq, r.records), (1, 50, 50));
    assert_eq!(store.count().unwrap(), 50);
    // Queries see the 50 records left, and the index keeps no batch wholly archived (the
    // second, 41..=70, holds records on both sides of the cut).
    let left = store.query(&Filter::default(), None, true, 1000).unwrap();
    assert_eq!(
        left.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (51..=100).collect::<Vec<_>>()
    );
    let stale = count(
        &store,
        "SELECT COUNT(*) FROM ix.batches WHERE last_seq <= 50",
    );
    assert_eq!(stale, 0);
    let kept = count(&store, "SELECT COUNT(*) FROM ix.batches");
    assert_eq!(kept, 1);
    let columns = sekimori::audit::verify::verify_columns(&store, |_| {}).unwrap();
    assert!(columns.problem.is_none(), "{:?}", columns.problem);
    assert_eq!((columns.records, columns.indexed), (50, 20));
    let report = verify(&store, Some(&key), None, |_| {}).unwrap();
    assert!(report.ok(), "{:?}", report.problem);
    assert_eq!(report.first_seq, Some(51));
    let a = sekimori::audit::archive::verify_archive(&archive, Some(&key))
        .unwrap()
        .unwrap();
    assert_eq!((a.from_seq, a.to_seq), (1, 50));
    // A second archive continues from the first one's last hash.
    let archive2 = dir.path().join("archive2.jsonl");
    let r2 = sekimori::audit::archive::archive(&store, 80_000_000, &archive2).unwrap();
    assert_eq!((r2.from_seq, r2.to_seq), (51, 75));
    assert!(verify(&store, Some(&key), None, |_| {}).unwrap().ok());
    assert!(
        sekimori::audit::archive::verify_archive(&archive2, Some(&key))
            .unwrap()
            .is_ok()
    );
    // Nothing older than the first checkpoint: nothing to archive.
    assert!(
        sekimori::audit::archive::archive(&store, 10_000_000, &dir.path().join("none.jsonl"))
            .is_err()
    );
}

#[test]
fn a_tampered_archive_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (store, key) = build_timed(dir.path());
    let archive = dir.path().join("archive.jsonl");
    sekimori::audit::archive::archive(&store, 60_000_000, &archive).unwrap();
    let text = std::fs::read_to_string(&archive).unwrap();
    // Remove record 30's line.
    let cut: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("\"seq\":30,"))
        .collect();
    std::fs::write(&archive, cut.join("\n") + "\n").unwrap();
    let (seq, what) = sekimori::audit::archive::verify_archive(&archive, Some(&key))
        .unwrap()
        .unwrap_err();
    assert_eq!(seq, 30, "{what}");
    // Change one byte of record 12.
    let changed = text.replacen(
        "\"seq\":12,\"time_us\":12000000",
        "\"seq\":12,\"time_us\":12000001",
        1,
    );
    assert_ne!(changed, text);
    std::fs::write(&archive, changed).unwrap();
    let (seq, what) = sekimori::audit::archive::verify_archive(&archive, Some(&key))
        .unwrap()
        .unwrap_err();
    assert_eq!(seq, 1, "{what}");
    assert!(what.contains("1..=50"), "{what}");
}

/// Archive headers no archive of ours has (sequence 0, an empty or reversed range, the
/// largest sequence number) are malformed, not arithmetic to wrap around.
#[test]
fn impossible_archive_headers_are_malformed() {
    use sekimori::audit::archive::{ArchiveError, verify_archive_from};
    let zero = "00".repeat(32);
    for (from, to) in [
        (0u64, 0u64),
        (0, 5),
        (5, 4),
        (1, u64::MAX),
        (u64::MAX, u64::MAX),
    ] {
        let text = format!(
            "{{\"sekimori_archive\":1,\"from_seq\":{from},\"to_seq\":{to},\"prev_hash\":\"{zero}\"}}\n{{\"checkpoint\":{{\"seq\":{to},\"hash\":\"{zero}\",\"time_us\":0,\"key_id\":\"k\",\"signature\":\"\"}}}}\n"
        );
        let got = verify_archive_from(text.as_bytes(), None);
        assert!(
            matches!(got, Err(ArchiveError::Malformed(1))),
            "{from}..{to}: {got:?}"
        );
    }
}

/// Checkpoints run beside the writer: committed records reach the database file itself,
/// not only the WAL, while the writer goes on; without the checkpointer they would stay in
/// the WAL until it reached the writer's own limit (16 MiB).
#[tokio::test]
async fn the_checkpointer_copies_committed_records_into_the_database_file() {
    use sekimori::audit::writer::{CheckpointPolicy, LogWriter};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let writer = LogWriter::start(&path, None, CheckpointPolicy::default()).unwrap();
    for i in 0..400 {
        let mut r = Record::new(RecordKind::Decision);
        r.system = Some("juki".into());
        r.reason = Some(format!("grant-{i}"));
        writer.append(vec![r]).await.unwrap();
    }
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while size(&path) < 64 * 1024 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let wal = size(&dir.path().join("log.db-wal"));
    assert!(
        size(&path) >= 64 * 1024,
        "the database file holds {} bytes after 400 commits (WAL {wal} bytes): nothing was checkpointed",
        size(&path)
    );
    assert!(wal < 32 * 1024 * 1024, "WAL {wal} bytes");
    drop(writer);
    let store = Store::open_read_only(&path).unwrap();
    let report = verify(&store, None, None, |_| {}).unwrap();
    assert!(report.ok(), "{:?}", report.problem);
    assert_eq!(report.records, 400);
}

/// Everything a query can return about `store`, for comparing states of its index: pages
/// (both directions, pages of five) for several filters, summaries, lookups by id and the
/// retention cut.
fn query_answers(store: &Store, ids: &[String]) -> Vec<String> {
    use sekimori::audit::query::{Filter, SummaryBy};
    let filters = [
        Filter::default(),
        Filter {
            sub: Some("e3".into()),
            ..Filter::default()
        },
        Filter {
            section: Some("s1".into()),
            from_us: Some(1_780_000_000_000_040),
            ..Filter::default()
        },
        Filter {
            reason: Some("grant".into()),
            system: Some("juki".into()),
            ..Filter::default()
        },
    ];
    let mut out = Vec::new();
    for f in &filters {
        for oldest_first in [false, true] {
            let mut cursor = None;
            let mut seqs = Vec::new();
            loop {
                let page = store.query(f, cursor, oldest_first, 5).unwrap();
                if page.is_empty() {
                    break;
                }
                cursor = page.last().map(|r| r.cursor());
                seqs.extend(page.iter().map(|r| r.seq));
            }
            out.push(format!("{f:?} oldest_first={oldest_first}: {seqs:?}"));
        }
        for by in [SummaryBy::Section, SummaryBy::Decision, SummaryBy::Day] {
            out.push(format!(
                "{f:?} by {by:?}: {:?}",
                store.summarize(f, by).unwrap()
            ));
        }
    }
    for id in ids {
        out.push(format!("{id}: {:?}", store.get(id).unwrap().map(|r| r.seq)));
    }
    out.push(format!(
        "{:?}",
        store.last_seq_before(1_780_000_000_000_050)
    ));
    out
}

/// `n` decision records from `first`, with subjects, sections, reasons and decisions mixed
/// and the clock stepping back every seventh record.
fn mixed_records(first: u64, n: u64) -> Vec<Record> {
    (first..first + n)
        .map(|i| {
            let mut r = Record::new(RecordKind::Decision);
            r.time_us = 1_780_000_000_000_000 + (i as i64 % 7) * 10 + i as i64;
            r.system = Some(if i % 3 == 0 { "zei" } else { "juki" }.into());
            r.subject = Some(sekimori::audit::record::SubjectRef {
                sub: format!("e{}", i % 5),
                section: Some(format!("s{}", i % 4)),
                kind: "staff".into(),
                contract: None,
            });
            r.decision = Some(if i % 2 == 0 { "allow" } else { "deny" }.into());
            r.reason = Some(if i % 2 == 0 { "grant" } else { "no_permission" }.into());
            r
        })
        .collect()
}

/// The auditors' index is filled in batches behind the log: a query gives the same answer
/// whether none, some or all of the records are indexed, and sees a record the moment it
/// is committed.
#[test]
fn queries_answer_alike_before_during_and_after_indexing() {
    use sekimori::audit::store::index_path;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let mut store = Store::open(&path).unwrap();
    let records = mixed_records(0, 120);
    let ids: Vec<String> = records.iter().step_by(17).map(|r| r.id.clone()).collect();
    let head = store.append(store.head().unwrap(), &records).unwrap();
    assert_eq!(store.index_lag().unwrap(), 120);
    let unindexed = query_answers(&store, &ids);
    // Not empty answers: every record is read from the log, and a filter finds its share.
    let all = |s: &Store| {
        s.query(&Default::default(), None, true, 1000)
            .unwrap()
            .len()
    };
    assert_eq!(all(&store), 120);
    let e3 = sekimori::audit::query::Filter {
        sub: Some("e3".into()),
        ..Default::default()
    };
    assert_eq!(store.query(&e3, None, true, 1000).unwrap().len(), 24);
    // Two batches, so that pages are gathered across them.
    store.set_min_batch(1);
    assert_eq!(store.index_pending(50).unwrap(), 50);
    assert_eq!(store.index_lag().unwrap(), 70);
    assert_eq!(query_answers(&store, &ids), unindexed, "half indexed");
    assert_eq!(store.index_pending(1000).unwrap(), 70);
    assert_eq!(store.index_pending(1000).unwrap(), 0);
    assert_eq!(store.indexed_through().unwrap(), 120);
    assert_eq!(query_answers(&store, &ids), unindexed, "all indexed");
    // The index is used: each batch lists the subject's records.
    let lists = count(
        &store,
        "SELECT COUNT(*) FROM ix.postings WHERE key = 'sub=e3'",
    );
    assert_eq!(lists, 2);
    // A record committed after the last batch is seen at once, from the log.
    let more = mixed_records(120, 3);
    store.append(head, &more).unwrap();
    let all_ids: Vec<String> = ids.iter().chain([&more[2].id]).cloned().collect();
    let with_tail = query_answers(&store, &all_ids);
    assert!(with_tail.last().is_some());
    assert!(with_tail.iter().any(|a| a.contains("123")), "{with_tail:?}");
    // Read-only stores (the CLI, the audit API) answer the same, with the index file or
    // without it.
    drop(store);
    let ro = Store::open_read_only(&path).unwrap();
    assert_eq!(query_answers(&ro, &all_ids), with_tail, "read-only");
    drop(ro);
    std::fs::remove_file(index_path(&path)).unwrap();
    let _ = std::fs::remove_file(dir.path().join("log.index.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("log.index.db-shm"));
    let ro = Store::open_read_only(&path).unwrap();
    assert_eq!(ro.index_lag().unwrap(), 123);
    assert_eq!(query_answers(&ro, &all_ids), with_tail, "no index file");
    // Reopened for writing, the index starts again from the log.
    drop(ro);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.index_pending(1000).unwrap(), 123);
    assert_eq!(query_answers(&store, &all_ids), with_tail, "rebuilt");
}

/// However slowly records come, the index stays a few large batches: a batch smaller than
/// `MIN_BATCH` is built again with the records after it, and answers do not change.
#[test]
fn a_small_last_batch_is_built_again_with_the_next_records() {
    use sekimori::audit::store::MIN_BATCH;
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("log.db")).unwrap();
    let batches = |s: &Store| -> Vec<(i64, i64)> {
        let mut stmt = s
            .connection()
            .prepare("SELECT first_seq, last_seq FROM ix.batches ORDER BY first_seq")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let records = mixed_records(0, 40);
    let ids: Vec<String> = records.iter().step_by(7).map(|r| r.id.clone()).collect();
    let head = store.append(store.head().unwrap(), &records).unwrap();
    let unindexed = query_answers(&store, &ids);
    for n in [10, 25, 5] {
        assert_eq!(store.index_pending(n).unwrap(), n);
    }
    assert_eq!(batches(&store), vec![(1, 40)], "one batch of 40");
    assert_eq!(query_answers(&store, &ids), unindexed);
    // Once a batch reaches MIN_BATCH it is left as it is.
    let big = MIN_BATCH - 40;
    let head = store.append(head, &mixed_records(40, big)).unwrap();
    assert_eq!(store.index_pending(u64::MAX).unwrap(), big);
    store.append(head, &mixed_records(MIN_BATCH, 3)).unwrap();
    let before = query_answers(&store, &ids);
    assert_eq!(store.index_pending(1000).unwrap(), 3);
    let last = i64::try_from(MIN_BATCH).unwrap();
    assert_eq!(batches(&store), vec![(1, last), (last + 1, last + 3)]);
    assert_eq!(query_answers(&store, &ids), before);
    assert_eq!(columns_problem(&store), None);
}

/// An index file of the former layout (one row per record in `entries`, seven B-tree
/// indexes) is dropped when the log is opened for writing and built again as batches.
#[test]
fn an_index_of_the_former_layout_is_built_again() {
    use sekimori::audit::store::index_path;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let records = mixed_records(0, 30);
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    let expected = {
        let mut store = Store::open(&path).unwrap();
        store.append(store.head().unwrap(), &records).unwrap();
        query_answers(&store, &ids)
    };
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", index_path(&path).display()));
    }
    {
        let old = rusqlite::Connection::open(index_path(&path)).unwrap();
        old.execute_batch(
            "CREATE TABLE entries (seq INTEGER PRIMARY KEY, id TEXT NOT NULL, time_us INTEGER NOT NULL, \
             kind TEXT NOT NULL, system TEXT, sub TEXT, section TEXT, asset TEXT, action TEXT, decision TEXT, \
             reason TEXT, tier TEXT, policy_version TEXT);
             CREATE INDEX entries_sub ON entries (sub, time_us);
             CREATE TABLE progress (id INTEGER PRIMARY KEY CHECK (id = 1), through INTEGER NOT NULL);
             INSERT INTO progress VALUES (1, 30);",
        )
        .unwrap();
    }
    // Read-only, the former index is not used (nor changed).
    let ro = Store::open_read_only(&path).unwrap();
    assert_eq!(query_answers(&ro, &ids), expected, "read-only");
    drop(ro);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.indexed_through().unwrap(), 0);
    let former = count(
        &store,
        "SELECT COUNT(*) FROM ix.sqlite_master WHERE name LIKE 'entries%'",
    );
    assert_eq!(former, 0, "the former table and its indexes are gone");
    assert_eq!(store.index_pending(1000).unwrap(), 30);
    assert_eq!(query_answers(&store, &ids), expected);
}

/// An index that is not this log's (copied from another log, or newer than a log restored
/// from backup), or is damaged, is never used: read-only stores do without it, and opening
/// for writing rebuilds it.
#[test]
fn an_index_that_is_damaged_or_not_this_logs_is_not_used() {
    use sekimori::audit::store::index_path;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let records = mixed_records(0, 40);
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    let expected = {
        let mut store = Store::open(&a).unwrap();
        store.append(store.head().unwrap(), &records).unwrap();
        query_answers(&store, &ids)
    };
    {
        // Another log with more records, fully indexed.
        let mut other = Store::open(&b).unwrap();
        other
            .append(other.head().unwrap(), &mixed_records(0, 60))
            .unwrap();
        assert_eq!(other.index_pending(1000).unwrap(), 60);
        other
            .connection()
            .execute_batch("PRAGMA ix.wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    std::fs::copy(index_path(&b), index_path(&a)).unwrap();
    let ro = Store::open_read_only(&a).unwrap();
    assert_eq!(
        query_answers(&ro, &ids),
        expected,
        "read-only, foreign index"
    );
    drop(ro);
    let store = Store::open(&a).unwrap();
    assert_eq!(store.indexed_through().unwrap(), 0, "rebuilt from the log");
    assert_eq!(store.index_pending(1000).unwrap(), 40);
    assert_eq!(query_answers(&store, &ids), expected, "after the rebuild");
    // A damaged index file (here: not a database at all) is not a reason to stop serving:
    // read-only stores do without it, opening for writing replaces it.
    drop(store);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", index_path(&a).display()));
    }
    std::fs::write(index_path(&a), vec![0x5a; 8192]).unwrap();
    let ro = Store::open_read_only(&a).unwrap();
    assert_eq!(
        query_answers(&ro, &ids),
        expected,
        "read-only, damaged index"
    );
    drop(ro);
    let store = Store::open(&a).unwrap();
    assert_eq!(store.indexed_through().unwrap(), 0, "a new index");
    assert_eq!(store.index_pending(1000).unwrap(), 40);
    assert_eq!(
        query_answers(&store, &ids),
        expected,
        "after replacing the damaged index"
    );
}

/// The writer's indexer thread indexes what is committed, without being asked.
#[tokio::test]
async fn the_indexer_thread_indexes_committed_records() {
    use sekimori::audit::writer::{CheckpointPolicy, LogWriter};
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let writer = LogWriter::start(&path, None, CheckpointPolicy::default()).unwrap();
    for chunk in mixed_records(0, 300).chunks(30) {
        writer.append(chunk.to_vec()).await.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while writer.stats.indexed_seq.load(Ordering::Relaxed) < 300
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(writer.stats.indexed_seq.load(Ordering::Relaxed), 300);
    let store = Store::open_read_only(&path).unwrap();
    assert_eq!(store.indexed_through().unwrap(), 300);
    assert_eq!(store.index_lag().unwrap(), 0);
}

/// The indexer runs at a lower CPU priority than the writer, the checkpointer and the
/// request workers, so that on a busy machine indexing waits rather than decisions and
/// commits: each thread's nice value as the kernel reports it.
#[tokio::test]
async fn the_indexer_yields_the_cpu_to_the_writer_and_the_checkpointer() {
    use sekimori::audit::writer::{CheckpointPolicy, INDEXER_NICER_BY, LogWriter};
    let dir = tempfile::tempdir().unwrap();
    let writer = LogWriter::start(
        &dir.path().join("log.db"),
        None,
        CheckpointPolicy::default(),
    )
    .unwrap();
    writer.append(mixed_records(0, 3)).await.unwrap();
    // (thread name, nice) of every thread of this process; `stat`'s fields after the
    // command's closing parenthesis start at the third, and the nice value is the 19th.
    let threads = || -> Vec<(String, i32)> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| {
                let t = t.ok()?.path();
                let name = std::fs::read_to_string(t.join("comm")).ok()?;
                let stat = std::fs::read_to_string(t.join("stat")).ok()?;
                let after = &stat[stat.rfind(')')? + 1..];
                let nice = after.split_whitespace().nth(19 - 3)?.parse().ok()?;
                Some((name.trim().to_string(), nice))
            })
            .collect()
    };
    let nice_of = |prefix: &str| -> Vec<i32> {
        threads()
            .into_iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, nice)| nice)
            .collect()
    };
    let writers = nice_of("sekimori-log-wr");
    assert!(
        !writers.is_empty(),
        "no writer thread among {:?}",
        threads()
    );
    let process_nice = writers[0];
    assert!(
        writers.iter().all(|&n| n == process_nice),
        "writers at {writers:?}"
    );
    // Ten levels nicer than the process, at most 19 (the lowest priority).
    let indexer = (process_nice + INDEXER_NICER_BY).min(19);
    // A thread sets its priority as it starts, and other tests start writers meanwhile:
    // allow a moment before judging.
    let settled = |prefix: &str, expected: i32| {
        let found = nice_of(prefix);
        !found.is_empty() && found.iter().all(|&n| n == expected)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !(settled("sekimori-log-in", indexer) && settled("sekimori-log-ch", process_nice))
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for (prefix, expected) in [
        ("sekimori-log-in", indexer),
        ("sekimori-log-ch", process_nice),
    ] {
        let found = nice_of(prefix);
        assert!(
            !found.is_empty(),
            "no {prefix} thread among {:?}",
            threads()
        );
        assert!(
            found.iter().all(|&n| n == expected),
            "{prefix} threads at nice {found:?}, expected {expected}"
        );
    }
    drop(writer);
}

/// The chain covers a record's bytes, not the columns queries filter on: `verify --index`
/// checks those (in the log and in the index) against the bytes, so a record hidden from
/// filtered queries by an altered column is named.
#[test]
fn altered_query_columns_and_index_entries_are_named() {
    use sekimori::audit::verify::verify_columns;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let mut store = Store::open(&path).unwrap();
    let mut records = mixed_records(0, 60);
    records[9].asset = Some(sekimori::audit::record::AssetRef {
        id: "juki-main".into(),
        tier: Some("secret".into()),
        ..Default::default()
    });
    store.append(store.head().unwrap(), &records).unwrap();
    assert_eq!(store.index_pending(40).unwrap(), 40);
    let first_problem = |store: &Store| {
        let r = verify_columns(store, |_| {}).unwrap();
        r.problem.map(|p| (p.seq, p.what))
    };
    let intact = verify_columns(&store, |_| {}).unwrap();
    assert!(intact.problem.is_none(), "{:?}", intact.problem);
    assert_eq!((intact.records, intact.indexed), (60, 40));
    for (tamper, restore, seq, words) in [
        (
            "UPDATE records SET sub = 'e9' WHERE seq = 50",
            "UPDATE records SET sub = 'e4' WHERE seq = 50",
            50,
            "the log's `sub`",
        ),
        (
            "UPDATE ix.postings SET key = 'asset=other' WHERE key = 'asset=juki-main'",
            "UPDATE ix.postings SET key = 'asset=juki-main' WHERE key = 'asset=other'",
            10,
            "the index's `asset`",
        ),
        (
            "UPDATE ix.postings SET key = 'tier=public' WHERE key = 'tier=secret'",
            "UPDATE ix.postings SET key = 'tier=secret' WHERE key = 'tier=public'",
            10,
            "the index's `tier`",
        ),
        (
            // The list of records of subject e1 (records 2, 7, 12, …) loses its first.
            "UPDATE ix.postings SET offsets = substr(offsets, 2) WHERE key = 'sub=e1'",
            "UPDATE ix.postings SET offsets = CAST(x'01' || offsets AS BLOB) WHERE key = 'sub=e1'",
            2,
            "does not list it under `sub=e1`",
        ),
        (
            "CREATE TABLE ix.saved AS SELECT first_seq, ids FROM ix.batches; \
             UPDATE ix.batches SET ids = zeroblob(length(ids))",
            "UPDATE ix.batches SET ids = (SELECT ids FROM ix.saved AS s \
             WHERE s.first_seq = batches.first_seq); DROP TABLE ix.saved",
            1,
            "hash of its id",
        ),
        (
            "UPDATE ix.progress SET through = 50",
            "UPDATE ix.progress SET through = 40",
            41,
            "missing from the index",
        ),
        (
            "INSERT INTO ix.batches (first_seq, last_seq, min_time, max_time, last_id, times, ids) \
             VALUES (41, 99, 0, 0, 'x', x'', x''); UPDATE ix.progress SET through = 99",
            "DELETE FROM ix.batches WHERE first_seq = 41; UPDATE ix.progress SET through = 40",
            41,
            "not all in the log",
        ),
        (
            "UPDATE ix.progress SET through = 30",
            "UPDATE ix.progress SET through = 40",
            31,
            "covers only up to 30",
        ),
    ] {
        sql(&store, tamper);
        let found = first_problem(&store);
        assert!(
            found
                .as_ref()
                .is_some_and(|(s, what)| *s == seq && what.contains(words)),
            "{tamper}: {found:?}"
        );
        sql(&store, restore);
        assert_eq!(first_problem(&store), None, "after undoing {tamper}");
    }
    // The command line: exit 0 when they match, 4 naming the record when they do not.
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sekimori"))
            .args(["audit", "verify", "--index", "--db"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let ok = run();
    let stdout = String::from_utf8_lossy(&ok.stdout).into_owned();
    assert_eq!(ok.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("40 indexed"), "{stdout}");
    sql(&store, "UPDATE records SET decision = 'deny' WHERE seq = 3");
    let bad = run();
    let stdout = String::from_utf8_lossy(&bad.stdout).into_owned();
    assert_eq!(bad.status.code(), Some(4), "{stdout}");
    assert!(
        stdout.contains("first record whose columns differ: 3"),
        "{stdout}"
    );
}

/// A log made before the indexes moved to their own file (its table with `id UNIQUE` and
/// six indexes of its own) opens, loses those indexes, and is indexed and queried like a
/// new one.
#[test]
fn a_log_with_the_former_in_file_indexes_is_upgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE records (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, time_us INTEGER NOT NULL, \
             kind TEXT NOT NULL, system TEXT, sub TEXT, section TEXT, asset TEXT, action TEXT, decision TEXT, \
             reason TEXT, tier TEXT, policy_version TEXT, body BLOB NOT NULL, hash BLOB NOT NULL);
             CREATE INDEX records_time ON records (time_us);
             CREATE INDEX records_sub ON records (sub, time_us);
             CREATE INDEX records_section ON records (section, time_us);
             CREATE INDEX records_system ON records (system, time_us);
             CREATE INDEX records_asset ON records (asset, time_us);
             CREATE INDEX records_reason ON records (reason, time_us);",
        )
        .unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    let left = count(
        &store,
        "SELECT COUNT(*) FROM main.sqlite_master WHERE type = 'index' AND name LIKE 'records_%'",
    );
    assert_eq!(left, 0, "the former indexes are dropped");
    let records = mixed_records(0, 30);
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    store.append(store.head().unwrap(), &records).unwrap();
    let before = query_answers(&store, &ids);
    assert_eq!(store.index_pending(1000).unwrap(), 30);
    assert_eq!(query_answers(&store, &ids), before);
    assert_eq!(columns_problem(&store), None);
}

/// A new log (kept in the returned directory) holding `n` mixed records, open for writing.
fn log_of(n: u64) -> (tempfile::TempDir, std::path::PathBuf, Store, Head) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    let mut store = Store::open(&path).unwrap();
    let head = store
        .append(store.head().unwrap(), &mixed_records(0, n))
        .unwrap();
    (dir, path, store, head)
}

/// A group that fails after some of its records were inserted leaves none of them: the
/// transaction is rolled back, the store's write lock released, and the next group starts
/// from the same head and chains on as if the failed one had never been sent. A transaction
/// still open when a group begins is ended first.
#[test]
fn a_group_failing_midway_leaves_nothing_and_the_next_one_chains_on() {
    let (_dir, path, mut store, head) = log_of(2);
    assert_eq!(head.seq, 2);
    // A row in the way of the group's second record: its first is inserted, then the
    // second fails on the primary key.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute(
            "INSERT INTO records (seq, id, time_us, kind, body, hash) VALUES (4, 'stray', 0, 'decision', x'00', x'00')",
            [],
        )
        .unwrap();
    assert!(store.append(head, &mixed_records(2, 2)).is_err());
    // The failed group holds no lock: another connection writes at once.
    other
        .execute("DELETE FROM records WHERE seq = 4", [])
        .expect("the failed group's transaction is still open");
    assert_eq!(count(&store, "SELECT COUNT(*) FROM records"), 2);
    let next = store.append(head, &mixed_records(2, 1)).unwrap();
    assert_eq!(next.seq, 3);
    // A transaction left open (a rollback that failed as well) is ended before the next
    // group begins, rather than failing every group after it.
    store.connection().execute_batch("BEGIN").unwrap();
    let last = store.append(next, &mixed_records(3, 1)).unwrap();
    assert_eq!(last.seq, 4);
    let report = verify(&store, None, None, |_| {}).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.records, 4);
}

/// A group commit takes the write lock of the log's file only: while the indexer holds a
/// transaction on the auditors' index file, decisions still commit without waiting for it.
#[test]
fn a_group_commits_while_the_index_file_is_being_written() {
    use sekimori::audit::store::index_path;
    let (_dir, path, mut store, head) = log_of(1);
    let indexer = rusqlite::Connection::open(index_path(&path)).unwrap();
    indexer.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = std::time::Instant::now();
    let next = store
        .append(head, &mixed_records(1, 2))
        .expect("the commit waited for the index file's lock");
    assert_eq!(next.seq, 3);
    // Waiting would have taken the store's busy timeout (seconds); this is a lock test,
    // not a timing one, so the bound is loose.
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    indexer.execute_batch("ROLLBACK").unwrap();
}
