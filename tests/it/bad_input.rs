//! Hostile and broken files yield diagnostics: never a panic, a hang or unbounded memory.

use crate::support::{at, overlay, repo};
use std::time::Instant;

fn load_with(file: &str, bytes: &[u8]) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    overlay(&repo().join("tests/fixtures/base"), tmp.path());
    std::fs::write(tmp.path().join(file), bytes).unwrap();
    let loaded = sekimori::policy::load(tmp.path(), at("2026-06-01"));
    assert!(!loaded.is_valid(), "a broken {file} must not load clean");
    loaded
        .diagnostics
        .all()
        .iter()
        .map(|d| d.code.to_string())
        .collect()
}

#[test]
fn truncated_file() {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/base/grants/s1.yaml")).unwrap();
    let codes = load_with("grants/s1.yaml", &text.as_bytes()[..text.len() / 2]);
    assert!(
        codes.iter().any(|c| c.starts_with("policy::yaml::")),
        "{codes:?}"
    );
}

#[test]
fn binary_file() {
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let codes = load_with("assets/s1.yaml", &bytes);
    assert!(
        codes.iter().any(|c| c == "policy::yaml::not_utf8"),
        "{codes:?}"
    );
}

#[test]
fn alias_bomb() {
    let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..20 {
        let p = i - 1;
        text.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let codes = load_with("assets/s1.yaml", text.as_bytes());
    assert_eq!(
        codes.first().map(String::as_str),
        Some("policy::yaml::alias_not_allowed"),
        "{codes:?}"
    );
}

#[test]
fn deeply_nested() {
    let text = format!("assets: {}{}", "[".repeat(200_000), "]".repeat(200_000));
    let codes = load_with("assets/s1.yaml", text.as_bytes());
    // Either our depth limit or the parser's own recursion limit stops it.
    let first = codes.first().map(String::as_str);
    assert!(
        matches!(
            first,
            Some("policy::yaml::too_deep" | "policy::yaml::syntax")
        ),
        "{codes:?}"
    );
}

#[test]
fn ten_megabytes_of_entries_with_wrong_types() {
    let mut text = String::from("assets:\n");
    while text.len() < 10 * 1024 * 1024 {
        text.push_str("  - { id: [x], owner: 1, systems: s, confidentiality: {a: b}, integrity: 1, availability: 1 }\n");
    }
    let started = Instant::now();
    let codes = load_with("assets/s1.yaml", text.as_bytes());
    assert!(
        started.elapsed().as_secs() < 60,
        "took {:?}",
        started.elapsed()
    );
    // Capped: diagnostics do not grow with the file.
    assert!(
        codes.len() <= sekimori::policy::diag::MAX_DIAGNOSTICS,
        "{}",
        codes.len()
    );
}

#[test]
fn oversized_file_is_refused_without_reading_it_all() {
    let text = vec![b'#'; sekimori::policy::yaml::MAX_FILE_BYTES + 10];
    let codes = load_with("assets/s1.yaml", &text);
    assert_eq!(
        codes.first().map(String::as_str),
        Some("policy::yaml::too_large"),
        "{codes:?}"
    );
}

#[test]
fn wrong_top_level_types() {
    for text in [
        "- a\n- b\n",
        "42\n",
        "assets: 42\n",
        "assets: [1, 2]\n",
        "assets:\n  - null\n",
    ] {
        let codes = load_with("assets/s1.yaml", text.as_bytes());
        assert!(
            codes.iter().all(|c| c.starts_with("policy::")),
            "{text}: {codes:?}"
        );
    }
}

#[test]
fn duplicate_keys_are_errors() {
    let codes = load_with("organization.yaml", b"scheme: classic\nscheme: mic-2024\nciso: e1\ndepartments: [{ id: d, sections: [{ id: s, chief: c }] }]\n");
    assert!(
        codes.contains(&"policy::yaml::duplicate_key".to_string()),
        "{codes:?}"
    );
}

#[test]
fn a_missing_directory_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let loaded = sekimori::policy::load(&tmp.path().join("nope"), at("2026-06-01"));
    assert!(!loaded.is_valid());
    assert!(
        loaded
            .diagnostics
            .all()
            .iter()
            .any(|d| d.code == "policy::file::missing")
    );
}

/// A policy file that is a directory, a dangling link or a pipe is an error naming it —
/// never silently left out of the bundle (a missing grants file would change decisions),
/// and never read (a pipe would block the loader forever).
#[test]
fn policy_files_that_cannot_be_read_are_errors_not_omissions() {
    let tmp = tempfile::tempdir().unwrap();
    overlay(&repo().join("tests/fixtures/base"), tmp.path());
    let grants = tmp.path().join("grants");
    std::fs::create_dir(grants.join("a-directory.yaml")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("gone.yaml"), grants.join("dangling.yaml")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(grants.join("pipe.yaml"))
        .status()
        .is_ok_and(|s| s.success());
    let started = Instant::now();
    let loaded = sekimori::policy::load(tmp.path(), at("2026-06-01"));
    assert!(started.elapsed().as_secs() < 5, "the loader must not block");
    assert!(!loaded.is_valid());
    let named: Vec<String> = loaded
        .diagnostics
        .all()
        .iter()
        .filter(|d| d.code == "policy::file::unreadable")
        .map(|d| loaded.bundle.sources.location(d.span).to_string())
        .collect();
    let mut expected = vec!["grants/a-directory.yaml", "grants/dangling.yaml"];
    if fifo {
        expected.push("grants/pipe.yaml");
    }
    for file in expected {
        assert!(
            named.iter().any(|n| n.contains(file)),
            "{file} must be named: {named:?}"
        );
    }
}

/// Random damage to the sample city's files — flipped bytes, truncations, inserted YAML
/// punctuation — never panics the loader, validator or compiler; a bundle that still loads
/// clean still compiles and decides.
#[test]
fn random_damage_never_panics() {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};
    let src = repo().join("policies");
    let files = [
        "organization.yaml",
        "systems.yaml",
        "contracts.yaml",
        "assets/shimin.yaml",
        "grants/shimin.yaml",
        "tests/allow-reasons.yaml",
    ];
    let specials: &[&[u8]] = &[
        b"&a ",
        b"*a",
        b": ",
        b"- ",
        b"[",
        b"]",
        b"{",
        b"}",
        b"\n  ",
        b"!!str ",
        b"'",
        b"\"",
        b"#",
        b"---\n",
        b"\t",
        b"\xff",
        b"\xe5\xb8\x82",
        b"? ",
    ];
    let mut rng = SmallRng::seed_from_u64(2026);
    let tmp = tempfile::tempdir().unwrap();
    overlay(&src, tmp.path());
    let mut compiled = 0;
    for round in 0..300 {
        let file = files[round % files.len()];
        let original = std::fs::read(src.join(file)).unwrap();
        let mut bytes = original.clone();
        for _ in 0..rng.gen_range(1..4) {
            let at = rng.gen_range(0..=bytes.len());
            match rng.gen_range(0..4) {
                0 if !bytes.is_empty() => {
                    let i = rng.gen_range(0..bytes.len());
                    bytes[i] ^= 1 << rng.gen_range(0..8);
                }
                1 => bytes.truncate(at),
                2 => {
                    let s = specials[rng.gen_range(0..specials.len())];
                    bytes.splice(at..at, s.iter().copied());
                }
                _ => {
                    let end = (at + rng.gen_range(0..40)).min(bytes.len());
                    bytes.drain(at..end);
                }
            }
        }
        std::fs::write(tmp.path().join(file), &bytes).unwrap();
        let loaded = sekimori::policy::load(tmp.path(), at("2026-06-01"));
        if loaded.is_valid() {
            let snap = sekimori::engine::Snapshot::compile(
                &loaded,
                at("2026-06-01T10:00:00+09:00"),
                &Default::default(),
            )
            .unwrap();
            for t in &loaded.bundle.tests {
                if let Ok(req) = sekimori::engine::Request::from_test_case(t) {
                    let d = snap.decide(&req);
                    assert_ne!(d.reason, sekimori::engine::Reason::InternalError);
                }
            }
            compiled += 1;
        }
        std::fs::write(tmp.path().join(file), &original).unwrap();
    }
    assert!(
        compiled > 0,
        "some damage leaves a valid bundle (comments, values): the compile path ran"
    );
}
