//! The gRPC service end to end: real TLS on 127.0.0.1:0, the sample city, development
//! certificates and tokens. Each test starts its own server and stops it.

use crate::support::repo;
use base64::Engine as _;
use sekimori::app::App;
use sekimori::audit::writer::Fault;
use sekimori::devpki::{self, DevCa, DevPaths, TokenClaims, Validity};
use sekimori::engine::{Env, Request, Snapshot, Subject, SubjectKind};
use sekimori::policy::model::{Action, RuntimeState};
use sekimori::server::proto::access_client::AccessClient;
use sekimori::server::proto::{
    BatchCheckRequest, CheckItem, CheckRequest, Environment, ListAccessibleRequest,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct TestServer {
    addr: std::net::SocketAddr,
    data: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    log: sekimori::audit::writer::LogWriter,
}

impl TestServer {
    async fn start() -> TestServer {
        let data = tempfile::tempdir().unwrap();
        // A copy: reload tests edit it while the server watches it.
        crate::support::overlay(&repo().join("policies"), &data.path().join("policies"));
        TestServer::start_in(data).await
    }

    /// Starts on an existing data directory (with its `policies/` copy): a restart.
    async fn start_in(data: tempfile::TempDir) -> TestServer {
        let policies = data.path().join("policies");
        let loaded = sekimori::policy::load(&policies, chrono::Utc::now());
        let systems: Vec<(String, String)> = loaded
            .bundle
            .systems
            .iter()
            .map(|s| (s.id.value.clone(), s.identity.value.clone()))
            .collect();
        devpki::ensure(&DevPaths::new(data.path()), &systems).unwrap();
        let config = devpki::dev_config(data.path(), &policies, "127.0.0.1:0").unwrap();
        let app = App::build(config).unwrap();
        let log = app.log.clone();
        let listener = app.bind().await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            app.run(listener, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            addr,
            data,
            stop: Some(tx),
            task,
            log,
        }
    }

    /// A connected channel with the given client certificate and key.
    async fn channel_as(&self, cert: std::path::PathBuf, key: std::path::PathBuf) -> Channel {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(
                std::fs::read(self.paths().ca_cert()).unwrap(),
            ))
            .identity(Identity::from_pem(
                std::fs::read(cert).unwrap(),
                std::fs::read(key).unwrap(),
            ))
            .domain_name("localhost");
        Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A channel with the development certificate of `system`.
    async fn system_channel(&self, system: &str) -> Channel {
        let p = self.paths();
        self.channel_as(p.client_cert(system), p.client_key(system))
            .await
    }

    /// A channel with the development operator certificate.
    async fn operator_channel(&self) -> Channel {
        let p = self.paths();
        self.channel_as(p.operator_cert(), p.operator_key()).await
    }

    fn paths(&self) -> DevPaths {
        DevPaths::new(self.data.path())
    }

    async fn client_with(
        &self,
        cert: Option<(String, String)>,
        ca_pem: String,
    ) -> Result<AccessClient<Channel>, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        if let Some((c, k)) = cert {
            tls = tls.identity(Identity::from_pem(c, k));
        }
        let channel = Channel::from_shared(format!("https://{}", self.addr))
            .unwrap()
            .tls_config(tls)?
            .timeout(std::time::Duration::from_secs(10))
            .connect()
            .await?;
        Ok(AccessClient::new(channel))
    }

    async fn client(&self, system: &str) -> AccessClient<Channel> {
        let p = self.paths();
        let cert = std::fs::read_to_string(p.client_cert(system)).unwrap();
        let key = std::fs::read_to_string(p.client_key(system)).unwrap();
        let ca = std::fs::read_to_string(p.ca_cert()).unwrap();
        self.client_with(Some((cert, key)), ca).await.unwrap()
    }

    fn key_pem(&self) -> String {
        std::fs::read_to_string(self.paths().token_key()).unwrap()
    }

    fn token(&self, sub: &str, section: Option<&str>, amr: &[&str]) -> String {
        devpki::sign_token(
            &self.key_pem(),
            &TokenClaims {
                sub: sub.into(),
                section: section.map(str::to_string),
                amr: amr.iter().map(|s| s.to_string()).collect(),
                ttl_secs: 600,
                ..TokenClaims::default()
            },
        )
        .unwrap()
    }

    /// A token with arbitrary claims and header, signed with the development key.
    fn custom_token(&self, header: jsonwebtoken::Header, claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_ed_pem(self.key_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    async fn stop(self) {
        let _ = self.stop_keeping_data().await;
    }

    /// Stops gracefully and hands back the data directory, for a restart.
    async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap();
        self.data
    }
}

/// An operator token (roles in the `roles` claim) signed with the development key.
fn op(server: &TestServer, sub: &str, roles: &[&str]) -> String {
    devpki::sign_token(
        &server.key_pem(),
        &TokenClaims {
            sub: sub.into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            ttl_secs: 600,
            ..TokenClaims::default()
        },
    )
    .unwrap()
}

/// A request carrying `token` as the operator's bearer token.
fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// After an attack: a well-formed Check from a registered system is still answered.
async fn assert_still_answers(server: &TestServer) {
    let mut c = server.client("juki").await;
    let token = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
    let d = decision_of(&mut c, check(token, "juki-tokei", "read", true, "")).await;
    assert!(d.allow, "the service must go on answering: {d:?}");
}

/// The decision of one Check that must be answered.
async fn decision_of(
    client: &mut AccessClient<Channel>,
    req: CheckRequest,
) -> sekimori::server::proto::Decision {
    client
        .check(req)
        .await
        .unwrap()
        .into_inner()
        .decision
        .unwrap()
}

fn check(token: String, asset: &str, action: &str, device: bool, purpose: &str) -> CheckRequest {
    CheckRequest {
        subject_token: token,
        asset: asset.into(),
        action: action.into(),
        env: Some(Environment {
            device_issued: device,
            purpose: purpose.into(),
            break_glass_reason: String::new(),
        }),
        request_id: "req-1".into(),
    }
}

fn eddsa_header() -> jsonwebtoken::Header {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    h.kid = Some(devpki::DEV_KID.into());
    h
}

fn claims(overrides: serde_json::Value) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    let mut c = serde_json::json!({ "iss": devpki::DEV_ISSUER, "aud": devpki::DEV_AUDIENCE, "sub": "e1010", "section": "shimin", "amr": ["pwd", "fpt"], "iat": now, "nbf": now - 10, "exp": now + 600 });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

fn assert_no_internals(status: &tonic::Status) {
    let m = status.message();
    assert!(
        !m.contains('/') && !m.contains("tmp") && !m.contains("Error") && m.len() < 200,
        "leaky message: {m}"
    );
}

#[tokio::test]
async fn the_sample_city_answers_over_mtls_as_the_engine_decides() {
    let server = TestServer::start().await;
    let loaded = sekimori::policy::load(&repo().join("policies"), chrono::Utc::now());
    let now = chrono::Utc::now();
    let snap = Snapshot::compile(&loaded, now, &RuntimeState::default()).unwrap();
    let mut reasons = std::collections::BTreeSet::new();
    for t in loaded
        .bundle
        .tests
        .iter()
        .filter(|t| t.state == RuntimeState::default())
    {
        let s = &t.subject;
        let token = server.custom_token(
            eddsa_header(),
            claims(serde_json::json!({ "sub": s.sub, "amr": s.amr, "section": s.section, "kind": s.kind, "contract": s.contract })),
        );
        let mut client = server.client(&t.system.value).await;
        let answer = decision_of(
            &mut client,
            CheckRequest {
                subject_token: token,
                asset: t.asset.value.clone(),
                action: t.action.value.as_str().into(),
                env: Some(Environment {
                    device_issued: t.env.device_issued,
                    purpose: t.env.purpose.clone().unwrap_or_default(),
                    break_glass_reason: t.env.break_glass_reason.clone().unwrap_or_default(),
                }),
                request_id: String::new(),
            },
        )
        .await;
        let local = snap.decide(&Request::from_test_case(t).unwrap());
        assert_eq!(answer.allow, local.allow, "{}", t.name);
        assert_eq!(answer.reason, local.reason.as_str(), "{}", t.name);
        assert_eq!(
            answer.rule.as_ref().map(|r| r.id.clone()),
            local.rule.as_ref().map(|r| r.id.to_string()),
            "{}",
            t.name
        );
        assert_eq!(
            answer.obligations.len(),
            local.obligations.len(),
            "{}",
            t.name
        );
        assert!(!answer.message_ja.is_empty() && !answer.message_en.is_empty());
        assert!(answer.policy_version.starts_with("sha256:"));
        assert_eq!(answer.decision_id.len(), 36);
        reasons.insert(answer.reason);
    }
    for r in [
        "unknown_asset",
        "system_not_holder",
        "contract_inactive",
        "unissued_device",
        "mfa_required",
        "purpose_required",
        "output_forbidden",
        "public",
        "owner_section",
        "grant",
        "no_permission",
    ] {
        assert!(reasons.contains(r), "no case answered {r} over the wire");
    }
    // Every answer has its record, committed before the answer.
    assert!(
        server
            .log
            .stats
            .committed_records
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 30
    );
    server.stop().await;
}

#[tokio::test]
async fn batch_check_keeps_order_and_mixes_answers() {
    let server = TestServer::start().await;
    let mut client = server.client("juki").await;
    let item = |asset: &str, action: &str, purpose: &str| CheckItem {
        asset: asset.into(),
        action: action.into(),
        env: Some(Environment {
            device_issued: true,
            purpose: purpose.into(),
            break_glass_reason: String::new(),
        }),
        request_id: String::new(),
    };
    let checks = vec![
        item("juki-main", "read", "jumin-kiroku"),
        item("juki-main", "export", "jumin-kiroku"),
        item("juki-tokei", "read", ""),
        item("nope", "read", ""),
        item("juki-main", "read", ""),
    ];
    let r = client
        .batch_check(BatchCheckRequest {
            subject_token: server.token("e1010", Some("shimin"), &["pwd", "fpt"]),
            checks,
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(bool, &str)> = r
        .decisions
        .iter()
        .map(|d| (d.allow, d.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (true, "grant"),
            (false, "output_forbidden"),
            (true, "public"),
            (false, "unknown_asset"),
            (false, "purpose_required")
        ]
    );
    let ids: std::collections::HashSet<_> =
        r.decisions.iter().map(|d| d.decision_id.clone()).collect();
    assert_eq!(ids.len(), 5, "decision ids are unique");
    server.stop().await;
}

#[tokio::test]
async fn list_accessible_pages_without_losing_assets() {
    let server = TestServer::start().await;
    let mut client = server.client("juki").await;
    let token = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
    let mut seen = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let r = client
            .list_accessible(ListAccessibleRequest {
                subject_token: token.clone(),
                action: "read".into(),
                env: Some(Environment {
                    device_issued: true,
                    purpose: "jumin-kiroku".into(),
                    break_glass_reason: String::new(),
                }),
                page_size: 2,
                page_token: page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.assets.len() <= 2);
        seen.extend(r.assets.iter().map(|a| a.asset.clone()));
        pages += 1;
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    // Brute force over the assets juki holds, through the engine.
    let loaded = sekimori::policy::load(&repo().join("policies"), chrono::Utc::now());
    let snap = Snapshot::compile(&loaded, chrono::Utc::now(), &RuntimeState::default()).unwrap();
    let expected: Vec<String> = loaded
        .bundle
        .assets
        .iter()
        .filter(|a| a.systems.iter().any(|s| s.value == "juki"))
        .filter(|a| {
            snap.decide(&Request {
                system: "juki".into(),
                subject: Subject::new(
                    "e1010",
                    Some("shimin"),
                    SubjectKind::Staff,
                    None,
                    &["pwd".into(), "fpt".into()],
                ),
                asset: a.id.value.clone(),
                action: Action::Read,
                env: Env {
                    device_issued: true,
                    purpose: Some("jumin-kiroku".into()),
                    break_glass_reason: None,
                },
            })
            .allow
        })
        .map(|a| a.id.value.clone())
        .collect();
    assert_eq!(seen, expected);
    assert!(pages >= 3, "paged: {pages}");
    let bad = client
        .list_accessible(ListAccessibleRequest {
            subject_token: token,
            action: "read".into(),
            env: None,
            page_size: 2,
            page_token: "not-a-token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn certificates_that_are_refused() {
    let server = TestServer::start().await;
    let ca = std::fs::read_to_string(server.paths().ca_cert()).unwrap();
    let token = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
    let req = || check(token.clone(), "juki-tokei", "read", true, "");

    // No client certificate: the handshake or the first call fails; never an answer.
    let no_cert = match server.client_with(None, ca.clone()).await {
        Ok(mut c) => c.check(req()).await.is_err(),
        Err(_) => true,
    };
    assert!(no_cert, "a call without a client certificate must fail");

    // A certificate from another CA.
    let other = DevCa::generate().unwrap();
    let (c, k) = other
        .issue(
            "juki",
            &["spiffe://koganei.city/juki".into()],
            false,
            Validity::default(),
        )
        .unwrap();
    let refused = match server.client_with(Some((c, k)), ca.clone()).await {
        Ok(mut cl) => cl.check(req()).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a certificate from another CA must be refused");

    // An expired certificate from the right CA.
    let paths = server.paths();
    let ca_key = std::fs::read_to_string(paths.dir.join("ca-key.pem")).unwrap();
    let our_ca = DevCa::from_pem(&ca, &ca_key).unwrap();
    let (c, k) = our_ca
        .issue(
            "juki",
            &["spiffe://koganei.city/juki".into()],
            false,
            Validity {
                from_days: -30,
                until_days: -1,
            },
        )
        .unwrap();
    let refused = match server.client_with(Some((c, k)), ca.clone()).await {
        Ok(mut cl) => cl.check(req()).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "an expired certificate must be refused");

    // A certificate that is not valid yet.
    let (c, k) = our_ca
        .issue(
            "juki",
            &["spiffe://koganei.city/juki".into()],
            false,
            Validity {
                from_days: 2,
                until_days: 30,
            },
        )
        .unwrap();
    let refused = match server.client_with(Some((c, k)), ca.clone()).await {
        Ok(mut cl) => cl.check(req()).await.is_err(),
        Err(_) => true,
    };
    assert!(
        refused,
        "a certificate that is not valid yet must be refused"
    );

    // A valid certificate whose SAN is not a registered system.
    let (c, k) = our_ca
        .issue(
            "stranger",
            &["spiffe://koganei.city/stranger".into()],
            false,
            Validity::default(),
        )
        .unwrap();
    let mut cl = server.client_with(Some((c, k)), ca.clone()).await.unwrap();
    let status = cl.check(req()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_no_internals(&status);

    // The operator certificate is not a business system either.
    let (c, k) = (
        std::fs::read_to_string(paths.operator_cert()).unwrap(),
        std::fs::read_to_string(paths.operator_key()).unwrap(),
    );
    let mut cl = server.client_with(Some((c, k)), ca).await.unwrap();
    assert_eq!(
        cl.check(req()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    server.stop().await;
}

#[tokio::test]
async fn tokens_that_are_refused() {
    let server = TestServer::start().await;
    let mut client = server.client("juki").await;
    let now = chrono::Utc::now().timestamp();
    let jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(server.paths().jwks()).unwrap()).unwrap();
    let public_x = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["x"].as_str().unwrap())
        .unwrap();
    // A token with the development key and these claims over a valid set.
    let signed =
        |overrides: serde_json::Value| server.custom_token(eddsa_header(), claims(overrides));
    let good = signed(serde_json::json!({}));
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(claims(serde_json::json!({"sub": "e0001"})).to_string());
        format!("{}.{}.{}", parts[0], payload, parts[2])
    };
    let alg_none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"alg":"none","typ":"JWT","kid":"dev-1"}"#),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(claims(serde_json::json!({})).to_string())
    );
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = Some(devpki::DEV_KID.into());
    let hs256_with_public_key = jsonwebtoken::encode(
        &hs,
        &claims(serde_json::json!({})),
        &jsonwebtoken::EncodingKey::from_secret(&public_x),
    )
    .unwrap();
    let mut unknown_kid = eddsa_header();
    unknown_kid.kid = Some("../../etc/passwd' OR 1=1".into());
    let cases: Vec<(&str, String)> = vec![
        ("empty", String::new()),
        ("garbage", "not a token".into()),
        ("expired", signed(serde_json::json!({"exp": now - 3600}))),
        (
            "not yet valid",
            signed(serde_json::json!({"nbf": now + 3600})),
        ),
        (
            "other issuer",
            signed(serde_json::json!({"iss": "https://evil.example"})),
        ),
        (
            "other audience",
            signed(serde_json::json!({"aud": "someone-else"})),
        ),
        ("no exp", signed(serde_json::json!({"exp": null}))),
        ("no iss", signed(serde_json::json!({"iss": null}))),
        ("tampered payload", tampered),
        ("alg none", alg_none),
        ("HS256 with the public key", hs256_with_public_key),
        (
            "unknown kid",
            server.custom_token(unknown_kid, claims(serde_json::json!({}))),
        ),
        ("unknown kind", signed(serde_json::json!({"kind": "admin"}))),
        (
            "control characters",
            signed(serde_json::json!({"sub": "e1010\u{1b}[31m"})),
        ),
        (
            "oversized",
            signed(serde_json::json!({"pad": "x".repeat(20_000)})),
        ),
        // 1 MB: under the 4 MiB message limit, far over the 16 KiB token limit.
        ("1 MB", format!("{}.{}", "a".repeat(1 << 20), good)),
        (
            "kid of no key",
            server.custom_token(
                {
                    let mut h = eddsa_header();
                    h.kid = Some("dev-2".into());
                    h
                },
                claims(serde_json::json!({})),
            ),
        ),
        (
            "NUL byte in sub",
            signed(serde_json::json!({"sub": "e1010\u{0}admin"})),
        ),
        (
            "right-to-left override in sub",
            signed(serde_json::json!({"sub": "e1010\u{202e}nimda"})),
        ),
        (
            "very long section",
            signed(serde_json::json!({"section": "s".repeat(300)})),
        ),
    ];
    for (name, token) in cases {
        let status = client
            .check(check(token, "juki-tokei", "read", true, ""))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        assert_no_internals(&status);
    }
    // The good token works, so the refusals above are the token's fault.
    let ok = client
        .check(check(good, "juki-tokei", "read", true, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.decision.unwrap().allow);
    server.stop().await;
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments() {
    let server = TestServer::start().await;
    let mut client = server.client("juki").await;
    let token = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
    let bad_requests = vec![
        (
            "unknown action",
            check(token.clone(), "juki-main", "peek", true, ""),
        ),
        ("empty asset", check(token.clone(), "", "read", true, "")),
        (
            "100 KB asset",
            check(token.clone(), &"a".repeat(100_000), "read", true, ""),
        ),
        (
            "asset with a newline",
            check(token.clone(), "juki-main\nread", "read", true, ""),
        ),
        (
            "asset with an ANSI escape",
            check(token.clone(), "juki\u{1b}[2J", "read", true, ""),
        ),
        (
            "oversized purpose",
            check(token.clone(), "juki-main", "read", true, &"p".repeat(1000)),
        ),
    ];
    for (name, req) in bad_requests {
        let status = client.check(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}");
        assert_no_internals(&status);
    }
    let item = CheckItem {
        asset: "juki-tokei".into(),
        action: "read".into(),
        env: None,
        request_id: String::new(),
    };
    for n in [0usize, 1001, 10_000] {
        let status = client
            .batch_check(BatchCheckRequest {
                subject_token: token.clone(),
                checks: vec![item.clone(); n],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{n} checks");
    }
    let ok = client
        .batch_check(BatchCheckRequest {
            subject_token: token,
            checks: vec![item; 1000],
        })
        .await
        .unwrap();
    assert_eq!(ok.into_inner().decisions.len(), 1000);
    server.stop().await;
}

fn store(server: &TestServer) -> sekimori::audit::store::Store {
    sekimori::audit::store::Store::open_read_only(server.log.path()).unwrap()
}

async fn health_status(server: &TestServer) -> i32 {
    let channel = server.system_channel("juki").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sekimori.v1.Access".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
const NOT_SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;

#[tokio::test]
async fn a_full_store_answers_unavailable_then_recovers_without_losing_anything() {
    store_fault_then_recovery(Fault::MaxPages(1), Fault::MaxPages(0)).await;
}

#[tokio::test]
async fn a_read_only_store_answers_unavailable_then_recovers_without_losing_anything() {
    store_fault_then_recovery(Fault::ReadOnly(true), Fault::ReadOnly(false)).await;
}

/// Under `fault` every Check is UNAVAILABLE and health NOT_SERVING; after `repair` the
/// service recovers by itself and every answered decision is in a chain that verifies.
async fn store_fault_then_recovery(fault: Fault, repair: Fault) {
    let server = TestServer::start().await;
    let mut client = server.client("juki").await;
    let token = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
    let first = decision_of(
        &mut client,
        check(token.clone(), "juki-tokei", "read", true, ""),
    )
    .await;
    assert!(store(&server).contains(&first.decision_id).unwrap());
    server.log.inject(fault).await;
    let mut unavailable = 0;
    let mut answered = Vec::new();
    for _ in 0..40 {
        match client
            .check(check(token.clone(), "juki-tokei", "read", true, ""))
            .await
        {
            Ok(r) => answered.push(r.into_inner().decision.unwrap().decision_id),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable);
                assert_no_internals(&status);
                unavailable += 1;
            }
        }
        if unavailable >= 3 {
            break;
        }
    }
    assert!(
        unavailable >= 3,
        "{fault:?}: the store must refuse decisions"
    );
    assert_eq!(health_status(&server).await, NOT_SERVING);
    // Repaired: it recovers by itself.
    server.log.inject(repair).await;
    let after = decision_of(&mut client, check(token, "juki-tokei", "read", true, "")).await;
    assert_eq!(health_status(&server).await, SERVING);
    let st = store(&server);
    for id in answered.iter().chain([&after.decision_id]) {
        assert!(
            st.contains(id).unwrap(),
            "an answered decision is missing: {id}"
        );
    }
    let report = sekimori::audit::verify::verify(&st, None, None, |_| {}).unwrap();
    assert!(report.ok(), "{:?}", report.problem);
    server.stop().await;
}

#[tokio::test]
async fn rejected_requests_are_recorded() {
    let server = TestServer::start().await;
    let mut client = server.client("juki").await;
    let status = client
        .check(check("garbage".into(), "juki-tokei", "read", true, ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let st = store(&server);
    let n: i64 = st
        .connection()
        .query_row(
            "SELECT COUNT(*) FROM records WHERE kind = 'rejected' AND system = 'juki'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    let starts: i64 = st
        .connection()
        .query_row(
            "SELECT COUNT(*) FROM records WHERE kind = 'start'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(starts, 1);
    server.stop().await;
}

#[tokio::test]
async fn health_reports_serving() {
    let server = TestServer::start().await;
    let channel = server.system_channel("juki").await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "sekimori.v1.Access".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

/// The wire shape of `CheckRequest` with `asset` as raw bytes, to send what a conforming
/// client cannot: a string field that is not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCheckRequest {
    #[prost(string, tag = "1")]
    subject_token: String,
    #[prost(bytes = "vec", tag = "2")]
    asset: Vec<u8>,
    #[prost(string, tag = "3")]
    action: String,
}

/// The path of `Access.Check`, for calls made with raw messages.
const CHECK_PATH: tonic::codegen::http::uri::PathAndQuery =
    tonic::codegen::http::uri::PathAndQuery::from_static("/sekimori.v1.Access/Check");

/// The codec of a `Check` call whose request is a [`RawCheckRequest`].
fn raw_check_codec()
-> tonic_prost::ProstCodec<RawCheckRequest, sekimori::server::proto::CheckResponse> {
    tonic_prost::ProstCodec::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_an_invalid_argument_without_internals() {
    let server = TestServer::start().await;
    let channel = server.system_channel("juki").await;
    let mut grpc = tonic::client::Grpc::new(channel);
    let token = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
    for asset in [
        b"juki-\xff\xfe".to_vec(),
        b"\xc0\xaf".to_vec(),
        b"juki\xed\xa0\x80".to_vec(),
    ] {
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                tonic::Request::new(RawCheckRequest {
                    subject_token: token.clone(),
                    asset,
                    action: "read".into(),
                }),
                CHECK_PATH,
                raw_check_codec(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(!status.message().contains("CheckRequest"), "{status:?}");
        assert_no_internals(&status);
    }
    // The connection and the service go on.
    let mut client = server.client("juki").await;
    let ok = client
        .check(check(token, "juki-tokei", "read", true, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.decision.unwrap().allow);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_cannot_ask_about_another_systems_asset() {
    let server = TestServer::start().await;
    let token = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
    // juki-tokei is held by juki: allowed there, denied when another system asks.
    let mut juki = server.client("juki").await;
    let here = decision_of(
        &mut juki,
        check(token.clone(), "juki-tokei", "read", true, ""),
    )
    .await;
    assert!(here.allow);
    let loaded = sekimori::policy::load(&repo().join("policies"), chrono::Utc::now());
    let other = loaded
        .bundle
        .systems
        .iter()
        .map(|s| s.id.value.clone())
        .find(|s| s != "juki")
        .unwrap();
    let mut elsewhere = server.client(&other).await;
    let there = decision_of(&mut elsewhere, check(token, "juki-tokei", "read", true, "")).await;
    assert!(!there.allow, "{other} must not get juki's asset: {there:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contractor_claiming_to_be_staff_gets_neither() {
    let server = TestServer::start().await;
    let mut client = server.client("juki").await;
    // k-2026-014 may read juki-tenshutsu as a contractor.
    let as_contractor = server.custom_token(
        eddsa_header(),
        claims(serde_json::json!({"sub": "x-014", "kind": "contractor", "contract": "k-2026-014", "section": null})),
    );
    let d = decision_of(
        &mut client,
        check(as_contractor, "juki-tenshutsu", "read", true, ""),
    )
    .await;
    assert!(d.allow, "the contract's own grant: {d:?}");
    // The same person's token saying `kind: staff` (no section): a staff subject's
    // contract claim is ignored, and staff without a section own nothing.
    let claiming_staff = server.custom_token(
        eddsa_header(),
        claims(serde_json::json!({"sub": "x-014", "kind": "staff", "contract": "k-2026-014", "section": null})),
    );
    let d = decision_of(
        &mut client,
        check(claiming_staff, "juki-tenshutsu", "read", true, ""),
    )
    .await;
    assert!(!d.allow, "{d:?}");
    server.stop().await;
}

/// Connections that never speak, and handshakes stalled half-way, do not hold up a
/// working client (handshakes run apart from the accept loop), and a stalled handshake is
/// closed by the server's handshake timeout (10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_do_not_starve_others() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let mut stalled = Vec::new();
    for i in 0..96 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        if i % 3 == 0 {
            // The first bytes of a ClientHello, then nothing.
            s.write_all(&legacy_client_hello(0x0303)[..12])
                .await
                .unwrap();
        }
        stalled.push(s);
    }
    let token = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
    let started = std::time::Instant::now();
    let mut c = server.client("juki").await;
    for _ in 0..20 {
        let d = c
            .check(check(token.clone(), "juki-tokei", "read", true, ""))
            .await
            .unwrap();
        assert!(d.into_inner().decision.unwrap().allow);
    }
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "a working client waited {took:?} behind stalled ones"
    );
    // The server closes a stalled handshake by itself.
    let mut one = stalled.remove(0);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        let mut buf = [0u8; 64];
        loop {
            match one.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a stalled handshake must be closed by the server"
    );
    drop(stalled);
    server.stop().await;
}

/// A caller that opens Check streams and never sends the request body: each stalled
/// request is ended by the server's request timeout (5 s), and a working client on its own
/// connection is answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_requests_end_at_the_timeout_and_others_go_on() {
    let server = TestServer::start().await;
    let channel = server.system_channel("juki").await;
    let started = std::time::Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        stalled.push(tokio::spawn(async move {
            grpc.ready().await.unwrap();
            // Headers go out; the body (the request message) never comes.
            grpc.client_streaming(
                tonic::Request::new(tokio_stream::pending::<RawCheckRequest>()),
                CHECK_PATH,
                raw_check_codec(),
            )
            .await
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    assert_still_answers(&server).await;
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "a working client waited {:?}",
        t.elapsed()
    );
    for s in stalled {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(15), s)
            .await
            .expect("the server ends a stalled request by itself")
            .unwrap();
        let status =
            outcome.expect_err("a request without a body is never answered with a decision");
        assert_no_internals(&status);
    }
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(4),
        "ended by the timeout, not at once"
    );
    server.stop().await;
}

/// A ClientHello offering only `version` (0x0301 = TLS 1.0, 0x0302 = TLS 1.1), as an old
/// client sends it: no `supported_versions` extension, CBC suites of that era.
fn legacy_client_hello(version: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 4] = [0xc013, 0xc009, 0x002f, 0x0035];
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // compression: null
    let mut handshake = vec![1u8]; // client_hello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_0_and_1_1_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    for version in [0x0301u16, 0x0302] {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(&legacy_client_hello(version)).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 512];
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("the server closes a legacy handshake promptly");
        // No ServerHello (a handshake record); at most a fatal alert.
        assert_ne!(answer.first(), Some(&0x16), "{version:#06x}: {answer:?}");
        if let Some(first) = answer.first() {
            assert_eq!(*first, 0x15, "an alert record: {answer:?}");
            assert_eq!(answer.get(5), Some(&2), "a fatal alert: {answer:?}");
        }
    }
    assert_still_answers(&server).await;
    server.stop().await;
}

#[test]
fn missing_tls_material_names_the_file() {
    let data = tempfile::tempdir().unwrap();
    let config = devpki::dev_config(data.path(), &repo().join("policies"), "127.0.0.1:0").unwrap();
    let err = App::build(config).unwrap_err().to_string();
    assert!(err.contains("jwks.json") || err.contains("server"), "{err}");
    // With the key set present but the certificate garbage, the certificate is named.
    let paths = DevPaths::new(data.path());
    devpki::ensure(
        &paths,
        &[("juki".into(), "spiffe://koganei.city/juki".into())],
    )
    .unwrap();
    std::fs::write(paths.server_cert(), "garbage").unwrap();
    let config = devpki::dev_config(data.path(), &repo().join("policies"), "127.0.0.1:0").unwrap();
    let err = App::build(config).unwrap_err().to_string();
    assert!(
        err.contains("server certificate")
            && err.contains(&paths.server_cert().display().to_string()),
        "{err}"
    );
}

mod audit_api {
    use super::*;
    use sekimori::server::proto::audit_client::AuditClient;
    use sekimori::server::proto::{
        ExportDecisionsRequest, Filter, GetDecisionRequest, QueryDecisionsRequest,
        SummarizeRequest, VerifyLogRequest,
    };

    async fn auditor_client(server: &TestServer) -> AuditClient<Channel> {
        let channel = server.operator_channel().await;
        AuditClient::new(channel)
    }

    /// Splits one CSV line of `audit export` (every field quoted, `""` for a quote).
    fn csv_fields(line: &str) -> Vec<String> {
        let mut fields = Vec::new();
        let mut chars = line.chars().peekable();
        while chars.peek().is_some() {
            let mut f = String::new();
            assert_eq!(chars.next(), Some('"'), "unquoted field in {line}");
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        f.push('"');
                    }
                    Some('"') => break,
                    Some(c) => f.push(c),
                    None => panic!("unterminated field in {line}"),
                }
            }
            fields.push(f);
            if chars.peek() == Some(&',') {
                chars.next();
            }
        }
        fields
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_ids_stay_data_in_the_log_queries_and_csv() {
        let server = TestServer::start().await;
        let mut c = server.client("juki").await;
        let token = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
        let hostile = [
            "=HYPERLINK(\"http://evil.example\",\"x\")",
            "+1+1",
            "-2+3",
            "@SUM(A1:A9)",
            "x' OR '1'='1",
            "'; DROP TABLE records; --",
        ];
        // Asset ids have a strict shape: such ids never get as far as the log.
        for id in hostile {
            let status = c
                .check(check(token.clone(), id, "read", true, ""))
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{id}");
        }
        // People's ids come from the identity provider and are free text (bounded, no
        // control characters): they are answered and recorded as data.
        for sub in hostile {
            let hostile_token =
                server.custom_token(eddsa_header(), claims(serde_json::json!({ "sub": sub })));
            let d = decision_of(&mut c, check(hostile_token, "juki-main", "read", true, sub)).await;
            assert!(!d.allow, "{sub}");
        }
        // SQL in a filter is a value: exactly the one record of that person, and the
        // table is still there.
        let mut a = auditor_client(&server).await;
        let tok = op(&server, "a9001", &["auditor"]);
        for sub in ["x' OR '1'='1", "'; DROP TABLE records; --"] {
            let page = a
                .query_decisions(authed(
                    QueryDecisionsRequest {
                        filter: Some(Filter {
                            sub: sub.into(),
                            ..Filter::default()
                        }),
                        ..QueryDecisionsRequest::default()
                    },
                    &tok,
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(page.records.len(), 1, "{sub}");
        }
        // The spreadsheet export never starts a cell with a formula character.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sekimori"))
            .args(["audit", "export", "--dev", "--data"])
            .arg(server.data.path())
            .args(["--addr", &format!("https://{}", server.addr)])
            .args(["--format", "csv"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let text = text.trim_start_matches('\u{feff}');
        let mut seen = 0;
        for line in text.lines().skip(1) {
            for field in csv_fields(line) {
                assert!(
                    !field.starts_with(['=', '+', '-', '@', '\t', '\r']),
                    "a formula cell: {field:?} in {line}"
                );
                if hostile.iter().any(|h| field == format!("'{h}")) {
                    seen += 1;
                }
            }
        }
        assert!(
            seen >= 4,
            "the hostile ids are exported, neutralized: {text}"
        );
        server.stop().await;
    }

    /// Makes a known mix of decisions: 3 allows for e1010, 2 denies for e1020.
    async fn traffic(server: &TestServer) -> Vec<String> {
        let mut c = server.client("juki").await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            let d = c
                .check(check(
                    server.token("e1010", Some("shimin"), &["pwd", "fpt"]),
                    "juki-main",
                    "read",
                    true,
                    "jumin-kiroku",
                ))
                .await
                .unwrap();
            ids.push(d.into_inner().decision.unwrap().decision_id);
        }
        for _ in 0..2 {
            let d = c
                .check(check(
                    server.token("e1020", Some("shimin"), &["pwd"]),
                    "juki-main",
                    "read",
                    true,
                    "jumin-kiroku",
                ))
                .await
                .unwrap();
            ids.push(d.into_inner().decision.unwrap().decision_id);
        }
        ids
    }

    fn filter(f: impl FnOnce(&mut Filter)) -> Option<Filter> {
        let mut x = Filter::default();
        f(&mut x);
        Some(x)
    }

    #[tokio::test]
    async fn auditors_query_with_each_filter_and_page() {
        let server = TestServer::start().await;
        let ids = traffic(&server).await;
        let mut a = auditor_client(&server).await;
        let token = op(&server, "a9001", &["auditor"]);
        let q = |f: Option<Filter>, size: u32, page: String, oldest: bool| QueryDecisionsRequest {
            filter: f,
            page_size: size,
            page_token: page,
            oldest_first: oldest,
        };
        let count = |f: Option<Filter>| {
            let mut a = a.clone();
            let token = token.clone();
            async move {
                a.query_decisions(authed(q(f, 1000, String::new(), true), &token))
                    .await
                    .unwrap()
                    .into_inner()
                    .records
                    .len()
            }
        };
        assert_eq!(count(filter(|f| f.sub = "e1010".into())).await, 3);
        assert_eq!(count(filter(|f| f.sub = "e1020".into())).await, 2);
        assert_eq!(count(filter(|f| f.decision = "deny".into())).await, 2);
        assert_eq!(
            count(filter(|f| f.reason = "no_permission".into())).await,
            0
        );
        assert_eq!(count(filter(|f| f.reason = "mfa_required".into())).await, 2);
        assert_eq!(count(filter(|f| f.asset = "juki-main".into())).await, 5);
        assert_eq!(count(filter(|f| f.system = "juki".into())).await, 5);
        assert_eq!(count(filter(|f| f.section = "shimin".into())).await, 5);
        assert_eq!(count(filter(|f| f.tier = "secret".into())).await, 5);
        assert_eq!(count(filter(|f| f.action = "read".into())).await, 5);
        assert_eq!(count(filter(|f| f.kind = "start".into())).await, 1);
        assert_eq!(count(filter(|f| f.from_us = i64::MAX - 1)).await, 0);
        assert_eq!(count(filter(|f| f.until_us = 1)).await, 0);
        // Paging newest first, two by two, returns every decision exactly once.
        let mut seen = Vec::new();
        let mut page = String::new();
        loop {
            let r = a
                .query_decisions(authed(
                    q(filter(|f| f.kind = "decision".into()), 2, page, false),
                    &token,
                ))
                .await
                .unwrap()
                .into_inner();
            seen.extend(r.records.iter().map(|x| x.id.clone()));
            if r.next_page_token.is_empty() {
                break;
            }
            page = r.next_page_token;
        }
        let mut expected = ids.clone();
        expected.reverse();
        assert_eq!(seen, expected);
        // One record by id: its canonical bytes carry the id.
        let rec = a
            .get_decision(authed(GetDecisionRequest { id: ids[0].clone() }, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(rec.canonical_json.contains(&ids[0]));
        assert_eq!(rec.hash.len(), 64);
        let missing = a
            .get_decision(authed(
                GetDecisionRequest {
                    id: "01a2175c-0000-7000-8000-000000000000".into(),
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
        server.stop().await;
    }

    #[tokio::test]
    async fn export_summarize_and_verify() {
        let server = TestServer::start().await;
        traffic(&server).await;
        let mut a = auditor_client(&server).await;
        let token = op(&server, "a9001", &["ciso"]);
        let mut stream = a
            .export_decisions(authed(
                ExportDecisionsRequest {
                    filter: filter(|f| f.kind = "decision".into()),
                    oldest_first: true,
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        let mut last = 0;
        while let Some(chunk) = stream.message().await.unwrap() {
            for r in chunk.records {
                assert!(r.seq > last);
                last = r.seq;
                n += 1;
            }
        }
        assert_eq!(n, 5);
        let s = a
            .summarize(authed(
                SummarizeRequest {
                    filter: filter(|f| f.kind = "decision".into()),
                    by: "decision".into(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let by: std::collections::HashMap<String, u64> =
            s.rows.iter().map(|r| (r.key.clone(), r.total)).collect();
        assert_eq!(by.get("allow"), Some(&3));
        assert_eq!(by.get("deny"), Some(&2));
        let days = a
            .summarize(authed(
                SummarizeRequest {
                    filter: None,
                    by: "day".into(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(days.rows.len(), 1);
        assert_eq!(
            days.rows[0].key,
            sekimori::time::jst_date(chrono::Utc::now()).to_string()
        );
        let v = a
            .verify_log(authed(VerifyLogRequest {}, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(v.ok, "{}", v.problem);
        assert!(v.records >= 6);
        let bad = a
            .summarize(authed(
                SummarizeRequest {
                    filter: None,
                    by: "weekday".into(),
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        server.stop().await;
    }

    #[tokio::test]
    async fn only_auditors_and_the_ciso_read_the_log_and_every_call_is_recorded() {
        let server = TestServer::start().await;
        let mut a = auditor_client(&server).await;
        let req = || QueryDecisionsRequest::default();
        let none = a
            .query_decisions(tonic::Request::new(req()))
            .await
            .unwrap_err();
        assert_eq!(none.code(), Code::Unauthenticated);
        for roles in [&[][..], &["security_admin"][..]] {
            let s = a
                .query_decisions(authed(req(), &op(&server, "a9001", roles)))
                .await
                .unwrap_err();
            assert_eq!(s.code(), Code::PermissionDenied, "{roles:?}");
        }
        // A staff token through a business system's certificate cannot read it either.
        let channel = server.system_channel("juki").await;
        let mut from_system = AuditClient::new(channel);
        let staff = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
        assert_eq!(
            from_system
                .query_decisions(authed(req(), &staff))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        for roles in [&["auditor"][..], &["ciso"][..]] {
            a.query_decisions(authed(req(), &op(&server, "a9001", roles)))
                .await
                .unwrap();
        }
        let st = store(&server);
        let audits: i64 = st
            .connection()
            .query_row(
                "SELECT COUNT(*) FROM records WHERE kind = 'audit' AND sub = 'a9001'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            audits, 2,
            "each admitted audit call is recorded with the auditor"
        );
        server.stop().await;
    }
}

mod living {
    use super::*;
    use sekimori::server::proto;
    use sekimori::server::proto::admin_client::AdminClient;
    use sekimori::server::proto::{
        DeclareEmergencyRequest, DeclareLockdownRequest, EndRequest, GetStatusRequest,
        ReloadRequest,
    };
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn admin(server: &TestServer) -> AdminClient<Channel> {
        let channel = server.operator_channel().await;
        AdminClient::new(channel)
    }

    async fn reason(server: &TestServer, sub: &str, asset: &str, extra: Option<&str>) -> String {
        let mut c = server.client("juki").await;
        let mut req = check(
            server.token(sub, Some("shimin"), &["pwd", "fpt"]),
            asset,
            "read",
            true,
            "jumin-kiroku",
        );
        if let Some(r) = extra {
            req.env.as_mut().unwrap().break_glass_reason = r.into();
        }
        c.check(req)
            .await
            .unwrap()
            .into_inner()
            .decision
            .unwrap()
            .reason
    }

    const NEW_GRANT: &str = "  - { id: inkan-new-staff, subjects: { users: [e1030] }, assets: [juki-inkan], actions: [read], valid_from: 2026-04-01, valid_until: 2027-04-01, approved_by: e1001 }\n";

    /// Reloads under continuous load: no request fails, a broken edit changes nothing,
    /// and the error shows in status; a fix is picked up.
    #[tokio::test]
    async fn reload_under_load_with_a_broken_edit_in_between() {
        let server = TestServer::start().await;
        let grants = server.data.path().join("policies/grants/shimin.yaml");
        let original = std::fs::read_to_string(&grants).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut load = Vec::new();
        for _ in 0..4 {
            let mut c = server.client("juki").await;
            let token = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match c
                        .check(check(
                            token.clone(),
                            "juki-main",
                            "read",
                            true,
                            "jumin-kiroku",
                        ))
                        .await
                    {
                        Ok(r) if r.get_ref().decision.as_ref().is_some_and(|d| d.allow) => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        assert_eq!(
            reason(&server, "e1030", "juki-inkan", None).await,
            "no_permission"
        );
        // Reading the files (every reload does) must not look like a change: no reloads
        // while nothing changes.
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        let idle: i64 = store(&server)
            .connection()
            .query_row(
                "SELECT COUNT(*) FROM records WHERE kind = 'reload'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(idle, 0, "reloads without any change");
        // A valid edit, saved by rename as editors do.
        let tmp = grants.with_extension("yaml.swp");
        std::fs::write(&tmp, format!("{original}{NEW_GRANT}")).unwrap();
        std::fs::rename(&tmp, &grants).unwrap();
        let mut picked_up = false;
        for _ in 0..100 {
            if reason(&server, "e1030", "juki-inkan", None).await == "grant" {
                picked_up = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert!(picked_up, "the watcher did not pick up the edit");
        // A broken edit: the last good version keeps serving.
        std::fs::write(
            &grants,
            format!("{original}{NEW_GRANT}  - {{ id: broken, subjects: [\n"),
        )
        .unwrap();
        let mut a = admin(&server).await;
        let admin_token = op(&server, "e4299", &["security_admin"]);
        let mut invalid = None;
        for _ in 0..100 {
            let st = a
                .get_status(authed(GetStatusRequest {}, &admin_token))
                .await
                .unwrap()
                .into_inner();
            if st
                .last_reload
                .as_ref()
                .is_some_and(|r| r.outcome == "invalid")
            {
                invalid = st.last_reload;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let invalid = invalid.expect("status shows the broken edit");
        assert!(
            invalid
                .diagnostics
                .iter()
                .any(|d| d.code == "policy::yaml::syntax"
                    && d.location.starts_with("grants/shimin.yaml:")),
            "{invalid:?}"
        );
        assert_eq!(
            reason(&server, "e1030", "juki-inkan", None).await,
            "grant",
            "a broken edit never changes a decision"
        );
        // The fix, through the Reload RPC.
        std::fs::write(&grants, &original).unwrap();
        let r = a
            .reload(authed(ReloadRequest {}, &admin_token))
            .await
            .unwrap()
            .into_inner()
            .outcome
            .unwrap();
        assert_eq!(r.outcome, "ok");
        assert_eq!(
            reason(&server, "e1030", "juki-inkan", None).await,
            "no_permission"
        );
        stop.store(true, Ordering::Relaxed);
        for t in load {
            t.await.unwrap();
        }
        assert_eq!(
            failed.load(Ordering::Relaxed),
            0,
            "requests failed during reloads"
        );
        assert!(ok.load(Ordering::Relaxed) > 50);
        let st = store(&server);
        let reloads: i64 = st
            .connection()
            .query_row(
                "SELECT COUNT(*) FROM records WHERE kind = 'reload'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(reloads >= 3, "every reload is recorded: {reloads}");
        server.stop().await;
    }

    /// The policy directory half-written, unreadable, or deleted under a running service:
    /// every reload is refused, the last good version keeps answering (same version, same
    /// decisions), status shows why; putting the files back is picked up again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_policy_directory_keeps_the_last_good_version_serving() {
        let server = TestServer::start().await;
        let mut a = admin(&server).await;
        let ciso = op(&server, "e0001", &["ciso"]);
        let dir = server.data.path().join("policies");
        let saved = server.data.path().join("policies.saved");
        crate::support::overlay(&dir, &saved);
        let version = a
            .get_status(authed(GetStatusRequest {}, &ciso))
            .await
            .unwrap()
            .into_inner()
            .policy_version;
        assert_eq!(reason(&server, "e1010", "juki-main", None).await, "grant");
        let grants = dir.join("grants/shimin.yaml");
        let text = std::fs::read(&grants).unwrap();
        type Damage = Box<dyn Fn(&std::path::Path, &std::path::Path)>;
        let damages: Vec<(&str, Damage)> = vec![
            (
                "half-written",
                Box::new(move |_: &std::path::Path, g: &std::path::Path| {
                    std::fs::write(g, &text[..text.len() / 2]).unwrap()
                }),
            ),
            (
                // Root reads any file whatever its mode, so unreadable is made the way
                // root also meets it: a directory where the file was.
                "unreadable",
                Box::new(|_: &std::path::Path, g: &std::path::Path| {
                    std::fs::remove_file(g).unwrap();
                    std::fs::create_dir(g).unwrap();
                }),
            ),
            (
                "deleted",
                Box::new(|d: &std::path::Path, _: &std::path::Path| {
                    std::fs::remove_dir_all(d).unwrap()
                }),
            ),
        ];
        for (what, damage) in damages {
            damage(&dir, &grants);
            let outcome = a
                .reload(authed(ReloadRequest {}, &ciso))
                .await
                .unwrap()
                .into_inner()
                .outcome
                .unwrap();
            assert_ne!(outcome.outcome, "ok", "{what}: {outcome:?}");
            let st = a
                .get_status(authed(GetStatusRequest {}, &ciso))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(st.policy_version, version, "{what}: the last good version");
            assert_ne!(st.last_reload.unwrap().outcome, "ok", "{what}");
            assert_eq!(
                reason(&server, "e1010", "juki-main", None).await,
                "grant",
                "{what}: decisions go on"
            );
            // Put the files back, the way a restore does: a complete copy moved into place.
            let _ = std::fs::remove_dir_all(&dir);
            let staged = server.data.path().join("policies.staged");
            crate::support::overlay(&saved, &staged);
            std::fs::rename(&staged, &dir).unwrap();
            let outcome = a
                .reload(authed(ReloadRequest {}, &ciso))
                .await
                .unwrap()
                .into_inner()
                .outcome
                .unwrap();
            assert_eq!(outcome.outcome, "ok", "{what} repaired: {outcome:?}");
            assert_eq!(outcome.policy_version, version);
        }
        // The directory was deleted and another moved into its place: edits to the new one
        // are still picked up by the watcher, without a Reload call.
        let edited = std::fs::read_to_string(dir.join("grants/shimin.yaml"))
            .unwrap()
            .replace("juki-main", "juki-tokei");
        std::fs::write(dir.join("grants/shimin.yaml"), edited).unwrap();
        let mut seen = false;
        for _ in 0..100 {
            let now = a
                .get_status(authed(GetStatusRequest {}, &ciso))
                .await
                .unwrap()
                .into_inner()
                .policy_version;
            if now != version {
                seen = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            seen,
            "an edit in the re-created directory must be picked up"
        );
        server.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_admin_api_needs_an_operator_role_and_an_operator_certificate() {
        let server = TestServer::start().await;
        let mut a = admin(&server).await;
        // No token at all.
        let s = a
            .get_status(tonic::Request::new(GetStatusRequest {}))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
        // A valid token without any role, and a staff token.
        let no_role = op(&server, "e1010", &[]);
        let staff = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
        for (who, token) in [("no role", &no_role), ("staff", &staff)] {
            for code in [
                a.get_status(authed(GetStatusRequest {}, token))
                    .await
                    .unwrap_err()
                    .code(),
                a.reload(authed(ReloadRequest {}, token))
                    .await
                    .unwrap_err()
                    .code(),
            ] {
                assert_eq!(code, Code::PermissionDenied, "{who}");
            }
        }
        // A business system's certificate, even with a CISO token, is not an operator.
        let channel = server.system_channel("juki").await;
        let mut from_system = AdminClient::new(channel);
        let ciso = op(&server, "e0001", &["ciso"]);
        let s = from_system
            .reload(authed(ReloadRequest {}, &ciso))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied);
        assert_no_internals(&s);
        // The operator certificate with the CISO token is.
        a.get_status(authed(GetStatusRequest {}, &ciso))
            .await
            .unwrap();
        server.stop().await;
    }

    #[tokio::test]
    async fn lockdowns_and_emergencies_take_effect_at_once_with_their_roles() {
        let server = TestServer::start().await;
        let mut a = admin(&server).await;
        let ciso = op(&server, "e0001", &["ciso"]);
        let secadmin = op(&server, "e4299", &["security_admin"]);
        let auditor = op(&server, "a9001", &["auditor"]);
        let staff = server.token("e1010", Some("shimin"), &["pwd", "fpt"]);
        let lockdown = || DeclareLockdownRequest {
            lockdown: Some(proto::Lockdown {
                id: "ld-juki".into(),
                systems: vec!["juki".into()],
                reason: "不正アクセスの疑い".into(),
                ..Default::default()
            }),
        };
        for (who, token) in [("staff", &staff), ("auditor", &auditor)] {
            let s = a
                .declare_lockdown(authed(lockdown(), token))
                .await
                .unwrap_err();
            assert_eq!(s.code(), Code::PermissionDenied, "{who}");
        }
        assert_eq!(reason(&server, "e1010", "juki-main", None).await, "grant");
        a.declare_lockdown(authed(lockdown(), &secadmin))
            .await
            .unwrap();
        // The very next Check.
        assert_eq!(
            reason(&server, "e1010", "juki-main", None).await,
            "lockdown"
        );
        assert_eq!(
            a.declare_lockdown(authed(lockdown(), &secadmin))
                .await
                .unwrap_err()
                .code(),
            Code::AlreadyExists
        );
        assert_eq!(
            a.lift_lockdown(authed(
                EndRequest {
                    id: "ld-juki".into()
                },
                &secadmin
            ))
            .await
            .unwrap_err()
            .code(),
            Code::PermissionDenied
        );
        let st = a
            .get_status(authed(GetStatusRequest {}, &auditor))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.lockdowns.len(), 1);
        assert_eq!(st.log_head_hash.len(), 64);
        assert_eq!(
            a.reload(authed(ReloadRequest {}, &auditor))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied,
            "an auditor may not reload"
        );
        assert_eq!(st.lockdowns[0].declared_by, "e4299");
        assert_eq!(st.assets, 47);
        assert!(
            st.files
                .iter()
                .any(|f| f.path == "grants/shimin.yaml" && f.sha256.len() == 64)
        );
        a.lift_lockdown(authed(
            EndRequest {
                id: "ld-juki".into(),
            },
            &ciso,
        ))
        .await
        .unwrap();
        assert_eq!(reason(&server, "e1010", "juki-main", None).await, "grant");
        assert_eq!(
            a.lift_lockdown(authed(
                EndRequest {
                    id: "ld-juki".into()
                },
                &ciso
            ))
            .await
            .unwrap_err()
            .code(),
            Code::NotFound
        );

        let until = (chrono::Utc::now() + chrono::Duration::hours(24)).to_rfc3339();
        let emergency = |hours_until: &str| DeclareEmergencyRequest {
            emergency: Some(proto::Emergency {
                id: "em-quake".into(),
                all: true,
                responder_users: vec!["e1020".into()],
                reason: "震度6弱".into(),
                until: hours_until.into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            a.declare_emergency(authed(emergency(&until), &secadmin))
                .await
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        let too_long = (chrono::Utc::now() + chrono::Duration::hours(100)).to_rfc3339();
        assert_eq!(
            a.declare_emergency(authed(emergency(&too_long), &ciso))
                .await
                .unwrap_err()
                .code(),
            Code::InvalidArgument
        );
        assert_eq!(
            reason(&server, "e1020", "juki-main", Some("安否確認")).await,
            "no_permission"
        );
        a.declare_emergency(authed(emergency(&until), &ciso))
            .await
            .unwrap();
        assert_eq!(
            reason(&server, "e1020", "juki-main", Some("安否確認")).await,
            "break_glass"
        );
        a.end_emergency(authed(
            EndRequest {
                id: "em-quake".into(),
            },
            &ciso,
        ))
        .await
        .unwrap();
        assert_eq!(
            reason(&server, "e1020", "juki-main", Some("安否確認")).await,
            "no_permission"
        );
        let st = store(&server);
        let admins: i64 = st
            .connection()
            .query_row(
                "SELECT COUNT(*) FROM records WHERE kind = 'admin'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(admins, 4, "declare, lift, declare, end are recorded");
        server.stop().await;
    }

    #[tokio::test]
    async fn state_survives_a_restart() {
        let server = TestServer::start().await;
        let mut a = admin(&server).await;
        let secadmin = op(&server, "e4299", &["security_admin"]);
        a.declare_lockdown(authed(
            DeclareLockdownRequest {
                lockdown: Some(proto::Lockdown {
                    id: "ld-shimin".into(),
                    sections: vec!["shimin".into()],
                    exempt: vec!["e0001".into()],
                    reason: "調査中".into(),
                    ..Default::default()
                }),
            },
            &secadmin,
        ))
        .await
        .unwrap();
        let data = server.stop_keeping_data().await;
        let server = TestServer::start_in(data).await;
        assert_eq!(
            reason(&server, "e1010", "juki-main", None).await,
            "lockdown"
        );
        let mut a = admin(&server).await;
        let st = a
            .get_status(authed(
                GetStatusRequest {},
                &op(&server, "a9001", &["auditor"]),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.lockdowns.len(), 1);
        assert_eq!(st.lockdowns[0].exempt, ["e0001"]);
        server.stop().await;
    }
}

#[tokio::test]
async fn metrics_are_exposed_and_move() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    sekimori::metrics::install(addr).unwrap();
    let server = TestServer::start().await;
    let mut c = server.client("juki").await;
    for _ in 0..3 {
        c.check(check(
            server.token("e1010", Some("shimin"), &["pwd", "fpt"]),
            "juki-main",
            "read",
            true,
            "jumin-kiroku",
        ))
        .await
        .unwrap();
    }
    let _ = c
        .check(check("garbage".into(), "juki-main", "read", true, ""))
        .await;
    // A connection without a client certificate fails its handshake: counted by cause.
    let ca = std::fs::read_to_string(server.paths().ca_cert()).unwrap();
    if let Ok(mut nc) = server.client_with(None, ca).await {
        let _ = nc
            .check(check("x".into(), "juki-main", "read", true, ""))
            .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let scrape = || async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body
    };
    let body = scrape().await;
    // Other tests in this process may add to the same counters: at least, not exactly.
    let value = |metric: &str| -> f64 {
        body.lines()
            .find(|l| l.starts_with(metric))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("missing {metric} in:\n{body}"))
    };
    assert!(value("sekimori_decisions_total{decision=\"allow\",reason=\"grant\"}") >= 3.0);
    assert!(value("sekimori_rejections_total{cause=\"malformed\"}") >= 1.0);
    assert!(value("sekimori_check_seconds_count{call=\"check\"}") >= 4.0);
    assert!(value("sekimori_log_commit_seconds_count") >= 1.0);
    // Each caller's wait for the log, on the same steps as the calls.
    assert!(value("sekimori_log_wait_seconds_count") >= 1.0);
    assert!(value("sekimori_log_wait_seconds_bucket{le=\"0.004\"}") >= 0.0);
    // Groups are counted in records (1, 2, 4, …, 8192), commits in fine steps of time.
    assert!(value("sekimori_log_batch_records_bucket{le=\"8192\"}") >= 1.0);
    assert!(value("sekimori_log_batch_records_bucket{le=\"1\"}") >= 0.0);
    assert!(
        !body.contains("sekimori_log_batch_records_bucket{le=\"0.00005\"}"),
        "record counts in buckets of seconds:\n{body}"
    );
    assert!(value("sekimori_log_commit_seconds_bucket{le=\"0.00015\"}") >= 0.0);
    // Calls in steps up to SPEC §11's 5 ms, so that the share within it can be read off.
    assert!(value("sekimori_check_seconds_bucket{call=\"check\",le=\"0.004\"}") >= 0.0);
    assert!(value("sekimori_check_seconds_bucket{call=\"check\",le=\"0.005\"}") >= 0.0);
    assert!(value("sekimori_rejections_total{cause=\"tls_no_client_certificate\"}") >= 1.0);
    assert!(
        body.contains("sekimori_policy_info{version=\"sha256:"),
        "{body}"
    );
    server.stop().await;
}

mod windows {
    use super::*;

    /// A grant that ends two seconds from now stops applying by itself: the snapshot is
    /// compiled again when the window closes, without a restart or a reload.
    #[tokio::test]
    async fn a_grant_window_closing_takes_effect_without_a_restart() {
        let data = tempfile::tempdir().unwrap();
        crate::support::overlay(&repo().join("policies"), &data.path().join("policies"));
        let until = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
        let grants = data.path().join("policies/grants/zz-window.yaml");
        std::fs::write(
            &grants,
            format!("grants:\n  - {{ id: short-window, subjects: {{ users: [e1040] }}, assets: [juki-inkan], actions: [read], valid_from: 2026-04-01, valid_until: \"{until}\", approved_by: e1001 }}\n"),
        )
        .unwrap();
        let server = TestServer::start_in(data).await;
        let mut c = server.client("juki").await;
        let ask = |c: &mut AccessClient<Channel>, token: String| {
            let mut c = c.clone();
            async move {
                c.check(check(token, "juki-inkan", "read", true, ""))
                    .await
                    .unwrap()
                    .into_inner()
                    .decision
                    .unwrap()
            }
        };
        let token = server.token("e1040", Some("shimin"), &["pwd", "fpt"]);
        let before = ask(&mut c, token.clone()).await;
        assert_eq!(
            (before.allow, before.rule.map(|r| r.id)),
            (true, Some("short-window".to_string()))
        );
        tokio::time::sleep(std::time::Duration::from_millis(2600)).await;
        let after = ask(&mut c, token).await;
        assert_eq!(after.reason, "no_permission", "the window closed");
        server.stop().await;
    }

    /// Kubernetes mounts a ConfigMap as symlinks into a `..data` directory that is swapped
    /// atomically; the swap is picked up.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_configmap_symlink_swap_is_picked_up() {
        let data = tempfile::tempdir().unwrap();
        let root = data.path().join("policies");
        let v1 = data.path().join("policies/..2026_v1");
        crate::support::overlay(&repo().join("policies"), &v1);
        std::os::unix::fs::symlink("..2026_v1", root.join("..data")).unwrap();
        for name in [
            "organization.yaml",
            "systems.yaml",
            "contracts.yaml",
            "assets",
            "grants",
            "tests",
        ] {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).unwrap();
        }
        let server = TestServer::start_in(data).await;
        let token = server.token("e1030", Some("shimin"), &["pwd", "fpt"]);
        let mut c = server.client("juki").await;
        let d = decision_of(&mut c, check(token.clone(), "juki-inkan", "read", true, "")).await;
        assert_eq!(d.reason, "no_permission");
        // The new version, then the atomic swap of `..data`.
        let v2 = server.data.path().join("policies/..2026_v2");
        crate::support::overlay(&v1, &v2);
        let g = v2.join("grants/shimin.yaml");
        let text = std::fs::read_to_string(&g).unwrap();
        std::fs::write(&g, format!("{text}  - {{ id: cm-grant, subjects: {{ users: [e1030] }}, assets: [juki-inkan], actions: [read], valid_from: 2026-04-01, valid_until: 2027-04-01, approved_by: e1001 }}\n")).unwrap();
        std::os::unix::fs::symlink("..2026_v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        let mut reason = String::new();
        for _ in 0..100 {
            reason = decision_of(&mut c, check(token.clone(), "juki-inkan", "read", true, ""))
                .await
                .reason;
            if reason == "grant" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(reason, "grant", "the ConfigMap swap was not picked up");
        server.stop().await;
    }
}

/// Plaintext HTTP/2 to the TLS port gets no answer: the connection is closed, promptly, and
/// the service goes on serving.
#[tokio::test]
async fn plaintext_http2_to_the_tls_port_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut total = Vec::new();
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break total,
                Ok(n) => total.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes a plaintext connection promptly");
    // Whatever came back (at most a TLS alert) is no HTTP/2 answer.
    assert!(!read.windows(8).any(|w| w == b"HTTP/2.0"), "{read:?}");
    assert_still_answers(&server).await;
    server.stop().await;
}
