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
