//! Prometheus metrics: names `sekimori_` + snake case + unit. Recorded through the
//! `metrics` facade (no-ops until [`install`] runs), served on their own address.

use std::net::SocketAddr;
use std::time::Duration;

/// Bucket bounds of `sekimori_log_batch_records`: 1, 2, 4, … up to the largest group.
const BATCH_BUCKETS: [f64; 14] = {
    let mut b = [1.0; 14];
    let mut i = 1;
    while i < b.len() {
        b[i] = b[i - 1] * 2.0;
        i += 1;
    }
    b
};
const _: () = assert!(BATCH_BUCKETS[13] as usize == crate::audit::writer::MAX_GROUP);

/// Bucket bounds of an access call's time and of a caller's wait for the log: steps of
/// 0.25–1 ms up to 5 ms, SPEC §11's bound on `Check`'s p99, so that the share of calls
/// within it and where the p99 lies can be read off the histogram (the load tool does: its
/// `handler` and `log` figures).
const CALL_BUCKETS: [f64; 18] = [
    0.000_1, 0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_5, 0.002, 0.002_5, 0.003, 0.004, 0.005,
    0.007_5, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Starts the exporter's HTTP listener at `addr` (`/metrics`). Once per process.
pub fn install(addr: SocketAddr) -> Result<(), String> {
    use metrics_exporter_prometheus::Matcher;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&[
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 1.0,
        ])
        .map_err(|e| e.to_string())?
        // A commit is mostly its fsync: finer steps where disks differ (a flush takes from
        // tens of µs to milliseconds), so an operator can read the disk's cost off the
        // histogram (docs/operations.md).
        .set_buckets_for_metric(
            Matcher::Full("sekimori_log_commit_seconds".into()),
            &[
                0.000_05, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.001_5,
                0.002_5, 0.005, 0.01, 0.025, 0.1, 1.0,
            ],
        )
        .map_err(|e| e.to_string())?
        // An access call (see `CALL_BUCKETS`).
        .set_buckets_for_metric(
            Matcher::Full("sekimori_check_seconds".into()),
            &CALL_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        // A caller's wait for the log, most of a call's time in the handler: on the same
        // steps, so that the two can be set side by side.
        .set_buckets_for_metric(
            Matcher::Full("sekimori_log_wait_seconds".into()),
            &CALL_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        // Records, not seconds: powers of two up to the writer's largest group.
        .set_buckets_for_metric(
            Matcher::Full("sekimori_log_batch_records".into()),
            &BATCH_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| e.to_string())?;
    metrics::describe_counter!(
        "sekimori_decisions_total",
        "decisions by decision and reason"
    );
    metrics::describe_counter!(
        "sekimori_decision_cache_total",
        "decisions whose Casbin verdict the policy snapshot remembered (hit) or evaluated (miss)"
    );
    metrics::describe_histogram!(
        "sekimori_check_seconds",
        "time to answer an access call, decision log commit included"
    );
    metrics::describe_histogram!(
        "sekimori_log_wait_seconds",
        "time a caller waited for the log writer's answer on its records (the queue and its group commit)"
    );
    metrics::describe_histogram!(
        "sekimori_log_commit_seconds",
        "time of one group commit (fsync included)"
    );
    metrics::describe_histogram!("sekimori_log_batch_records", "records per group commit");
    metrics::describe_gauge!(
        "sekimori_log_queue_depth",
        "record batches waiting for the writer"
    );
    metrics::describe_counter!(
        "sekimori_log_commit_failures_total",
        "group commits that failed (answered UNAVAILABLE)"
    );
    metrics::describe_counter!("sekimori_reloads_total", "policy reloads by outcome");
    metrics::describe_gauge!(
        "sekimori_policy_info",
        "the policy version in force (label), value 1"
    );
    metrics::describe_gauge!(
        "sekimori_log_index_lag_records",
        "decision-log records committed but not yet indexed for queries (read from the log meanwhile)"
    );
    metrics::describe_counter!(
        "sekimori_rejections_total",
        "requests refused before a decision, by cause"
    );
    Ok(())
}

pub fn decision(allow: bool, reason: &'static str) {
    metrics::counter!("sekimori_decisions_total", "decision" => if allow { "allow" } else { "deny" }, "reason" => reason).increment(1);
}

/// A decision whose Casbin verdict was remembered (`hit`) or evaluated (`miss`).
pub fn decision_cache(hit: bool) {
    metrics::counter!("sekimori_decision_cache_total", "result" => if hit { "hit" } else { "miss" }).increment(1);
}

pub fn check_latency(call: &'static str, took: Duration) {
    metrics::histogram!("sekimori_check_seconds", "call" => call).record(took.as_secs_f64());
}

pub fn log_commit(took: Duration, records: usize) {
    metrics::histogram!("sekimori_log_commit_seconds").record(took.as_secs_f64());
    metrics::histogram!("sekimori_log_batch_records").record(records as f64);
}

pub fn log_wait(took: Duration) {
    metrics::histogram!("sekimori_log_wait_seconds").record(took.as_secs_f64());
}

pub fn log_queue_depth(depth: usize) {
    metrics::gauge!("sekimori_log_queue_depth").set(depth as f64);
}

/// Records committed to the log but not yet in the auditors' index (see `audit::store`).
pub fn log_index_lag(records: u64) {
    metrics::gauge!("sekimori_log_index_lag_records").set(records as f64);
}

pub fn log_commit_failed() {
    metrics::counter!("sekimori_log_commit_failures_total").increment(1);
}

pub fn reload(outcome: &'static str) {
    metrics::counter!("sekimori_reloads_total", "outcome" => outcome).increment(1);
}

pub fn policy_version(version: &str) {
    metrics::gauge!("sekimori_policy_info", "version" => version.to_string()).set(1.0);
}

pub fn rejection(cause: &'static str) {
    metrics::counter!("sekimori_rejections_total", "cause" => cause).increment(1);
}
