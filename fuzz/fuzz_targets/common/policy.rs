//! Shared by the per-kind policy targets: one policy file with arbitrary content in an
//! otherwise valid bundle. The loader, validator and compiler never panic, hang or grow
//! without bound, and a bundle that loads clean compiles and decides its own tests with
//! Casbin and the explainer agreeing.

use sekimori::engine::Snapshot;
use sekimori::policy::model::RuntimeState;
use std::path::PathBuf;
use std::sync::OnceLock;

const FILES: [&str; 6] = [
    "organization.yaml",
    "systems.yaml",
    "contracts.yaml",
    "assets/s1.yaml",
    "grants/s1.yaml",
    "tests/t.yaml",
];

/// A private copy of the base fixture, made once per fuzzing process.
fn bundle() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/base");
        let dir = std::env::temp_dir().join(format!("sekimori-fuzz-policy-{}", std::process::id()));
        for f in FILES {
            let to = dir.join(f);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(base.join(f), to).unwrap();
        }
        dir
    })
}

/// Replaces `file` (one of the bundle's paths) with `content`, loads, validates, compiles
/// and decides; then puts the original back.
pub fn one_file(file: &str, content: &[u8]) {
    let dir = bundle();
    let path = dir.join(file);
    let original = std::fs::read(&path).unwrap();
    std::fs::write(&path, content).unwrap();
    let at = sekimori::time::parse_policy_time("2026-06-01T12:00:00+09:00").unwrap();
    let loaded = sekimori::policy::load(dir, at);
    if loaded.is_valid() {
        let snap = Snapshot::compile(&loaded, at, &RuntimeState::default())
            .expect("a valid bundle compiles");
        for case in &loaded.bundle.tests {
            if let Ok(req) = sekimori::engine::Request::from_test_case(case) {
                let _ = snap.decide(&req);
            }
        }
        assert_eq!(snap.disagreements(), 0, "Casbin and the explainer disagree");
    }
    std::fs::write(&path, original).unwrap();
}
