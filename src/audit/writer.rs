//! The single writer with group commit.
//!
//! Callers send batches of records and wait; one OS thread owns the SQLite connection,
//! takes every batch waiting (up to [`MAX_GROUP`] records), appends them in one
//! transaction — one fsync — and only then answers every caller. Under load the groups
//! grow by themselves. The queue is bounded: when it is full, callers wait (backpressure).
//! When a commit fails (disk full, read-only, corruption), every caller of that group
//! gets [`LogError`], the store is marked unhealthy, and the next group tries again:
//! nothing is acknowledged that was not committed, and it recovers by itself.

use super::checkpoint::Signer;
use super::record::{Record, RecordKind};
use super::store::{Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Most records in one transaction.
pub const MAX_GROUP: usize = 8192;
/// Batches that may wait in the queue before callers wait to enqueue.
pub const QUEUE_BATCHES: usize = 4096;

/// The log could not commit: no decision may be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the decision log cannot commit")]
pub struct LogError;

/// When to write a signed checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    pub every_records: u64,
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_records: 10_000,
            every: Duration::from_secs(60),
        }
    }
}

enum Message {
    Append(Vec<Record>, oneshot::Sender<Result<(), LogError>>),
    Fault(Fault, oneshot::Sender<()>),
}

/// Faults the fault tests inject into the store, at SQLite's level, where a real disk's
/// failure arrives. (A filesystem cannot be remounted read-only while the log is open for
/// writing, so a store turning read-only under a running service is simulated here; a real
/// full disk and a read-only directory at start are tested with real filesystems.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Limit the database to this many pages (0 = no limit): a full disk.
    MaxPages(u64),
    /// Refuse every write (`PRAGMA query_only`), as SQLite does on a read-only store.
    ReadOnly(bool),
}

/// Observable state of the writer.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub committed_records: AtomicU64,
    pub commits: AtomicU64,
    pub failed_commits: AtomicU64,
    pub last_group: AtomicU64,
    pub head_seq: AtomicU64,
    /// Chain hash of the last committed record (hex-encoded by whoever reads it, so that a
    /// commit allocates nothing for it).
    pub head_hash: std::sync::Mutex<[u8; 32]>,
    pub last_checkpoint_seq: AtomicU64,
    /// The last record in the auditors' index.
    pub indexed_seq: AtomicU64,
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct LogWriter {
    tx: mpsc::Sender<Message>,
    healthy: watch::Receiver<bool>,
    pub stats: Arc<WriterStats>,
    path: PathBuf,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LogWriter {
    /// Opens the store and starts the writer thread.
    pub fn start(
        path: &Path,
        signer: Option<Signer>,
        policy: CheckpointPolicy,
    ) -> Result<LogWriter, StoreError> {
        let mut store = Store::open(path)?;
        let head = store.head()?;
        let (tx, mut rx) = mpsc::channel::<Message>(QUEUE_BATCHES);
        let (health_tx, healthy) = watch::channel(true);
        let stats = Arc::new(WriterStats::default());
        stats.head_seq.store(head.seq, Ordering::Relaxed);
        if let Ok(mut h) = stats.head_hash.lock() {
            *h = head.hash;
        }
        let thread_stats = stats.clone();
        let unhealthy = Arc::new(AtomicBool::new(false));
        let checkpointer = start_checkpointer(path)?;
        let indexer = start_indexer(path, stats.clone())?;
        std::thread::Builder::new()
            .name(String::from("sekimori-log-writer"))
            .spawn(move || {
                // Dropped when this thread ends: the checkpointer and the indexer then stop.
                let _checkpointer = checkpointer;
                let _indexer = indexer;
                let mut head = head;
                let mut since_checkpoint = 0u64;
                let mut last_checkpoint = Instant::now();
                while let Some(first) = rx.blocking_recv() {
                    let mut group: Vec<Record> = Vec::new();
                    let mut waiters: Vec<oneshot::Sender<Result<(), LogError>>> = Vec::new();
                    let take = |m: Message, group: &mut Vec<Record>, waiters: &mut Vec<_>| match m {
                        Message::Append(records, reply) => {
                            group.extend(records);
                            waiters.push(reply);
                        }
                        Message::Fault(fault, reply) => {
                            let _ = match fault {
                                Fault::MaxPages(n) => store.set_max_pages(n),
                                Fault::ReadOnly(on) => store.set_query_only(on),
                            };
                            let _ = reply.send(());
                        }
                    };
                    take(first, &mut group, &mut waiters);
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(m) => take(m, &mut group, &mut waiters),
                            Err(_) => break,
                        }
                    }
                    if group.is_empty() {
                        continue;
                    }
                    let started = Instant::now();
                    let result = store.append(head, &group);
                    match result {
                        Ok(new_head) => {
                            crate::metrics::log_commit(started.elapsed(), group.len());
                            head = new_head;
                            thread_stats
                                .committed_records
                                .fetch_add(group.len() as u64, Ordering::Relaxed);
                            thread_stats.commits.fetch_add(1, Ordering::Relaxed);
                            thread_stats
                                .last_group
                                .store(group.len() as u64, Ordering::Relaxed);
                            thread_stats.head_seq.store(head.seq, Ordering::Relaxed);
                            if let Ok(mut h) = thread_stats.head_hash.lock() {
                                *h = head.hash;
                            }
                            if unhealthy.swap(false, Ordering::SeqCst) {
                                tracing::info!("the decision log commits again");
                                let _ = health_tx.send(true);
                            }
                            for reply in waiters {
                                let _ = reply.send(Ok(()));
                            }
                            since_checkpoint += group.len() as u64;
                            if let Some(signer) = &signer {
                                if since_checkpoint >= policy.every_records
                                    || last_checkpoint.elapsed() >= policy.every
                                {
                                    let cp =
                                        signer.sign(head, chrono::Utc::now().timestamp_micros());
                                    // A checkpoint that cannot be written is retried at the next commit.
                                    if store.add_checkpoint(&cp).is_ok() {
                                        since_checkpoint = 0;
                                        last_checkpoint = Instant::now();
                                        thread_stats
                                            .last_checkpoint_seq
                                            .store(head.seq, Ordering::Relaxed);
                                    }
                                }
                            }
                        }
                        Err(_) => {
                            crate::metrics::log_commit_failed();
                            tracing::error!(
                                records = group.len(),
                                "the decision log cannot commit; answering UNAVAILABLE"
                            );
                            thread_stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                            if !unhealthy.swap(true, Ordering::SeqCst) {
                                let _ = health_tx.send(false);
                            }
                            for reply in waiters {
                                let _ = reply.send(Err(LogError));
                            }
                        }
                    }
                }
                // The channel closed: every sender is gone, everything sent was answered.
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the log writer thread: {e}")))?;
        Ok(LogWriter {
            tx,
            healthy,
            stats,
            path: path.to_path_buf(),
        })
    }

    /// Appends records durably; resolves when they are committed (fsync'd). How long the
    /// caller waited for the writer's answer (the queue and the group commit, whether the
    /// commit succeeded or not) goes to `sekimori_log_wait_seconds`.
    pub async fn append(&self, records: Vec<Record>) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Message::Append(records, reply))
            .await
            .map_err(|_| LogError)?;
        crate::metrics::log_queue_depth(self.tx.max_capacity() - self.tx.capacity());
        let committed = rx.await.map_err(|_| LogError)?;
        crate::metrics::log_wait(started.elapsed());
        committed
    }

    /// Whether the last commit succeeded.
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy.clone()
    }

    /// Fault tests: inject a store fault (see [`Fault`]); returns once it is in place.
    pub async fn inject(&self, fault: Fault) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Message::Fault(fault, reply)).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How often the checkpointer copies the WAL into the database file. Often enough that the
/// writer's own checkpoint (at [`super::store::WRITER_CHECKPOINT_PAGES`]) finds little left
/// to copy: at 200 ms, under load, it found up to 200 ms of frames and held commits for
/// 5–45 ms two or three times a second, which set the tail latency of `Check`
/// (BENCHMARKS.md). On an idle log a round is two lock calls on the WAL's shared memory
/// (measured: 0.4 % of a core).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(25);

/// How much nicer than the process the indexer thread runs (capped at 19, the lowest
/// priority): it only keeps the auditors' index up with the log (queries read what it has
/// not reached from the log itself), so it yields the CPU to answering and committing; that
/// took 0.6–1.6 ms off `Check`'s p99 in three alternating pairs of runs (BENCHMARKS.md).
/// Ten levels below, it still gets about a tenth of a busy core (its weight against a
/// thread of the process's priority), more than it needs at the load SPEC §11 measures; on
/// an idle core it runs at full speed. Relative, so that a service started nicer (or, as
/// root, less nice) keeps the order. The checkpointer keeps the process's priority:
/// starved, it would leave its copying to the writer's own checkpoint, inside a commit.
pub const INDEXER_NICER_BY: i32 = 10;

/// Starts the checkpointer thread: it copies committed WAL frames into the database file
/// (and fsyncs it) off the writer's thread, which measured 27 % more records/s with fsync
/// (`cargo bench --bench log_append`). Under unbroken load a checkpoint running beside the
/// writer never finds the WAL fully copied, so SQLite could not restart it; the writer's own
/// checkpoint at [`super::store::WRITER_CHECKPOINT_PAGES`] copies the last frames and
/// bounds the WAL. A failed checkpoint loses nothing: the frames stay in the WAL.
fn start_checkpointer(path: &Path) -> Result<Sender<()>, StoreError> {
    let store = Store::open_for_checkpoints(path)?;
    start_background("checkpointer", CHECKPOINT_EVERY, 0, move |_| {
        store.checkpoint().map(|_| ())
    })
}

/// How often the indexer looks for records to index.
const INDEX_EVERY: Duration = Duration::from_millis(500);
/// Most records indexed in one transaction of the index file, as one batch. Large batches
/// are the point: a value that recurs in a batch is one row of postings, however many of
/// the batch's records hold it (see `postings`).
pub const INDEX_BATCH: u64 = 50_000;
/// While fewer records than this wait, the indexer lets up to [`INDEX_MAX_WAIT`] pass
/// before indexing them: the last batch, while smaller than `store::MIN_BATCH`, is built
/// again each time, and a round for a handful of records would redo thousands.
const INDEX_MIN_LAG: u64 = 256;
/// The longest a committed record waits for the index when records come slowly (queries
/// read it from the log meanwhile).
const INDEX_MAX_WAIT: Duration = Duration::from_secs(2);

/// Starts the indexer thread: it copies the query columns of newly committed records into
/// the index file in large batches (see `store`), off the writer's thread and outside its
/// commits. A failure loses nothing: the records stay in the log, queries read them there.
fn start_indexer(path: &Path, stats: Arc<WriterStats>) -> Result<Sender<()>, StoreError> {
    let store = Store::open_for_indexing(path)?;
    let mut last_round = std::time::Instant::now();
    start_background("indexer", INDEX_EVERY, INDEXER_NICER_BY, move |stopped| {
        let waiting = stats
            .head_seq
            .load(Ordering::Relaxed)
            .saturating_sub(stats.indexed_seq.load(Ordering::Relaxed));
        if waiting < INDEX_MIN_LAG && last_round.elapsed() < INDEX_MAX_WAIT {
            return Ok(());
        }
        last_round = std::time::Instant::now();
        loop {
            let n = store.index_pending(INDEX_BATCH)?;
            let through = store.indexed_through()?;
            stats.indexed_seq.store(through, Ordering::Relaxed);
            let head = stats.head_seq.load(Ordering::Relaxed);
            crate::metrics::log_index_lag(head.saturating_sub(through));
            // Caught up, or asked to stop: wait for the next round.
            if n < INDEX_BATCH || !matches!(stopped.try_recv(), Err(TryRecvError::Empty)) {
                return Ok(());
            }
        }
    })
}

/// Starts the log's background thread `sekimori-log-<name>`, which runs `round` every
/// `every` until the returned sender is dropped (the writer's thread holds it), `nicer_by`
/// nice levels below the process (0: at its priority). A round that fails is retried at
/// the next one and reported once until one succeeds again.
fn start_background(
    name: &str,
    every: Duration,
    nicer_by: i32,
    mut round: impl FnMut(&Receiver<()>) -> Result<(), StoreError> + Send + 'static,
) -> Result<Sender<()>, StoreError> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let what = name.to_string();
    std::thread::Builder::new()
        .name(format!("sekimori-log-{name}"))
        .spawn(move || {
            // Linux keeps a nice value per thread: this one is set from the thread's own
            // (inherited from the process). Unprivileged, since it only raises it; if refused
            // all the same (a seccomp filter), the thread keeps the process's priority.
            if nicer_by != 0 {
                let lowered = rustix::process::getpriority_process(None).and_then(|own| {
                    rustix::process::setpriority_process(None, (own + nicer_by).min(19))
                });
                if let Err(e) = lowered {
                    tracing::debug!(error = %e, "the log {what} keeps the process's CPU priority");
                }
            }
            let mut failing = false;
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                match round(&stopped) {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "decision log {what} failed; retrying");
                    }
                    Err(_) => {}
                }
            }
        })
        .map_err(|e| StoreError::Corrupt(format!("cannot start the log {name}: {e}")))?;
    Ok(stop)
}

/// A start or stop record.
pub fn lifecycle(kind: RecordKind, detail: &str) -> Record {
    let mut r = Record::new(kind);
    r.detail = Some(detail.to_string());
    r
}
