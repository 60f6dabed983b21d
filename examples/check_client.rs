//! A business system's first call to sekimori, in Rust (see docs/integration.md).
//!
//! cargo run --example check_client -- --addr https://127.0.0.1:7443 \
//!   --cacert data/dev/ca.pem --cert data/dev/clients/juki.pem --key data/dev/clients/juki-key.pem \
//!   --token "$(cargo run -q -- dev token --sub e1010 --section shimin --amr pwd,fpt)"
//!
//! A real system generates its own client from `proto/sekimori/v1/access.proto`
//! (tonic-prost-build); this example borrows sekimori's generated types.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sekimori::server::proto::access_client::AccessClient;
use sekimori::server::proto::{CheckRequest, Environment};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn arg(name: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    let i = args
        .iter()
        .position(|a| a == name)
        .unwrap_or_else(|| panic!("missing {name}"));
    args[i + 1].clone()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Mutual TLS: our client certificate names our system; the CA verifies sekimori.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(arg("--cacert"))?))
        .identity(Identity::from_pem(
            std::fs::read(arg("--cert"))?,
            std::fs::read(arg("--key"))?,
        ))
        .domain_name("localhost");
    let channel = Channel::from_shared(arg("--addr"))?
        .tls_config(tls)?
        .connect()
        .await?;
    let mut client = AccessClient::new(channel);

    // 2. Ask before the access, forwarding the token of the person at the keyboard.
    let response = client
        .check(CheckRequest {
            subject_token: arg("--token"),
            asset: "juki-main".into(),
            action: "read".into(),
            env: Some(Environment {
                device_issued: true,
                purpose: "jumin-kiroku".into(),
                break_glass_reason: String::new(),
            }),
            request_id: "madoguchi-0001".into(),
        })
        .await;

    // 3. Any error (UNAVAILABLE included) means: refuse the access.
    let decision = match response {
        Ok(r) => r.into_inner().decision.expect("a decision"),
        Err(status) => {
            eprintln!("refusing access: sekimori answered {:?}", status.code());
            std::process::exit(1);
        }
    };
    // 4. Allow only with every obligation carried out; show the reason to the person.
    println!(
        "{} {} — {}",
        if decision.allow { "ALLOW" } else { "DENY" },
        decision.reason,
        decision.message_ja
    );
    for o in &decision.obligations {
        println!("obligation: {} {}", o.kind, o.text);
    }
    println!("decision id: {}", decision.decision_id);
    std::process::exit(if decision.allow { 0 } else { 5 });
}
