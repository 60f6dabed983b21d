//! Faults: a real full disk and a read-only data directory (size-limited tmpfs mounts, set
//! up by the tests themselves), the policy directory deleted, unreadable or half-written
//! under a running service, and stalled clients next to a working one.
//!
//! Mounting needs root (CI runs as root); where the machine forbids it the test says so
//! loudly on standard error and in its name's output, and does not pretend to have run.

use crate::log::{free_port, spawn_server, wait_for};
use crate::support::repo;
use sekimori::audit::store::Store;
use sekimori::devpki::{self, DevPaths, TokenClaims};
use sekimori::server::proto::CheckRequest;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

/// A tmpfs mounted on a directory for one test; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str, read_only: bool) -> Result<Tmpfs, String> {
        let mut options = format!("size={size}");
        if read_only {
            options.push_str(",ro");
        }
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (needs root): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    fn remount(&self, options: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {options} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Says loudly that a fault test could not run here, and why.
fn skipped(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why} — this machine forbids the fault; nothing was tested");
}

fn token(data: &Path) -> String {
    let key = std::fs::read_to_string(DevPaths::new(data).token_key()).unwrap();
    devpki::sign_token(
        &key,
        &TokenClaims {
            sub: "e1010".into(),
            section: Some("shimin".into()),
            amr: vec!["pwd".into(), "fpt".into()],
            ttl_secs: 600,
            ..TokenClaims::default()
        },
    )
    .unwrap()
}

fn request(token: &str) -> CheckRequest {
    CheckRequest {
        subject_token: token.into(),
        asset: "juki-tokei".into(),
        action: "read".into(),
        env: None,
        request_id: String::new(),
    }
}

/// Fills the filesystem holding `dir` until the kernel says it is full.
fn fill_up(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

/// A real disk full: the decision log lives on a 24 MiB tmpfs that another file fills.
/// Checks are refused with UNAVAILABLE (never answered without their record), and once
/// space is freed the service answers again by itself; every decision a client received
/// is in the log and the chain verifies. The server runs as its own process.
#[tokio::test]
async fn a_really_full_disk_answers_unavailable_then_recovers() {
    let data = tempfile::tempdir().unwrap();
    let mount = match Tmpfs::mount(data.path(), "24m", false) {
        Ok(m) => m,
        Err(why) => return skipped("a_really_full_disk_answers_unavailable_then_recovers", &why),
    };
    let port = free_port();
    let mut child = spawn_server(data.path(), port);
    let mut c = wait_for(data.path(), port).await;
    let token = token(data.path());
    let mut answered = Vec::new();
    for _ in 0..20 {
        let d = c.check(request(&token)).await.unwrap().into_inner();
        answered.push(d.decision.unwrap().decision_id);
    }
    let filler = fill_up(data.path());
    let mut unavailable = 0;
    for _ in 0..5_000 {
        match c.check(request(&token)).await {
            Ok(r) => answered.push(r.into_inner().decision.unwrap().decision_id),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(!status.message().contains('/'), "{status:?}");
                unavailable += 1;
                if unavailable >= 3 {
                    break;
                }
            }
        }
    }
    assert!(unavailable >= 3, "a full disk must refuse decisions");
    eprintln!(
        "full disk: {} decisions answered before the disk filled up, then {unavailable} UNAVAILABLE",
        answered.len()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server must stay up on a full disk"
    );
    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        if let Ok(r) = c.check(request(&token)).await {
            answered.push(r.into_inner().decision.unwrap().decision_id);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(recovered, "the service answers again once there is space");
    child.kill().unwrap();
    child.wait().unwrap();
    let store = Store::open_read_only(&data.path().join("decisions.db")).unwrap();
    for id in &answered {
        assert!(
            store.contains(id).unwrap(),
            "answered {id} is not in the log"
        );
    }
    let report = sekimori::audit::verify::verify(&store, None, None, |_| {}).unwrap();
    assert!(report.ok(), "{:?}", report.problem);
    drop(store);
    drop(mount);
}

/// A data directory on a read-only filesystem: the service does not start, and says which
/// file it could not open (it never serves without a writable log).
#[tokio::test]
async fn a_read_only_data_directory_stops_the_start_naming_the_log() {
    let data = tempfile::tempdir().unwrap();
    let mount = match Tmpfs::mount(data.path(), "16m", false) {
        Ok(m) => m,
        Err(why) => {
            return skipped(
                "a_read_only_data_directory_stops_the_start_naming_the_log",
                &why,
            );
        }
    };
    // A first start writes the development certificates, keys and the log.
    let port = free_port();
    let mut child = spawn_server(data.path(), port);
    let _ = wait_for(data.path(), port).await;
    child.kill().unwrap();
    child.wait().unwrap();
    mount.remount("ro");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sekimori"))
        .args(["serve", "--dev", "--metrics", "off", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data")
        .arg(data.path())
        .arg("--policies")
        .arg(repo().join("policies"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("read-only data directory: {}", stderr.trim());
    assert!(!out.status.success(), "it must not serve: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && last.contains("decisions.db") && last.contains("read-only"),
        "the last line names the log and the likely cause: {stderr}"
    );
    mount.remount("rw");
    drop(mount);
}
