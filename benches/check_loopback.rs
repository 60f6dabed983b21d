//! First latency figure for `Check` over mutual TLS on loopback: the development setup
//! (sample city, in-memory decision log), one connection, sequential calls, then 16
//! concurrent callers. `cargo bench --bench check_loopback`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sekimori::app::App;
use sekimori::devpki::{self, DevPaths, TokenClaims};
use sekimori::server::proto::access_client::AccessClient;
use sekimori::server::proto::{CheckRequest, Environment};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e6
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let data = tempfile::tempdir().unwrap();
        let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let loaded = sekimori::policy::load(&policies, chrono::Utc::now());
        let systems: Vec<(String, String)> = loaded.bundle.systems.iter().map(|s| (s.id.value.clone(), s.identity.value.clone())).collect();
        let paths = DevPaths::new(data.path());
        devpki::ensure(&paths, &systems).unwrap();
        let app = App::build(devpki::dev_config(data.path(), &policies, "127.0.0.1:0").unwrap()).unwrap();
        let listener = app.bind().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run(listener, async {
            let _ = rx.await;
        }));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(paths.ca_cert()).unwrap()))
            .identity(Identity::from_pem(std::fs::read(paths.client_cert("juki")).unwrap(), std::fs::read(paths.client_key("juki")).unwrap()))
            .domain_name("localhost");
        let channel = Channel::from_shared(format!("https://{addr}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
        let key = std::fs::read_to_string(paths.token_key()).unwrap();
        let token = devpki::sign_token(&key, &TokenClaims { sub: "e1010".into(), section: Some("shimin".into()), amr: vec!["pwd".into(), "fpt".into()], ttl_secs: 3600, ..TokenClaims::default() }).unwrap();
        let request = CheckRequest {
            subject_token: token,
            asset: "juki-main".into(),
            action: "read".into(),
            env: Some(Environment { device_issued: true, purpose: "jumin-kiroku".into(), break_glass_reason: String::new() }),
            request_id: String::new(),
        };
        for (label, concurrency, per_task) in [("sequential", 1usize, 4000usize), ("16 concurrent", 16, 500)] {
            let started = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..concurrency {
                let mut client = AccessClient::new(channel.clone());
                let req = request.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per_task);
                    for _ in 0..per_task {
                        let t = Instant::now();
                        let d = client.check(req.clone()).await.unwrap().into_inner().decision.unwrap();
                        assert!(d.allow);
                        lat.push(t.elapsed());
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            let wall = started.elapsed();
            all.sort_unstable();
            eprintln!(
                "check over mTLS, {label}: {} calls, {:.0} calls/s, p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs",
                all.len(),
                all.len() as f64 / wall.as_secs_f64(),
                pct(&all, 0.5),
                pct(&all, 0.9),
                pct(&all, 0.99)
            );
        }
        let _ = tx.send(());
        let _ = server.await;
    });
}
