//! One fixture directory per diagnostic code: `tests/fixtures/diagnostics/<case>/` holds
//! the files that differ from `tests/fixtures/base/` and `expect.txt`, the exact list of
//! `file:line:column severity code` the bundle must produce. `SEKIMORI_BLESS=1` rewrites
//! `expect.txt` (review the diff before committing).

use crate::support::{at, overlay, repo};
use sekimori::policy::diag::Severity;

fn render(dir: &std::path::Path) -> String {
    let loaded = sekimori::policy::load(dir, at("2026-06-01T10:00:00+09:00"));
    let mut out = String::new();
    for d in loaded.diagnostics.all() {
        let loc = loaded.bundle.sources.location(d.span);
        let sev = match d.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        out.push_str(&format!("{loc} {sev} {}\n", d.code));
    }
    out
}

#[test]
fn the_base_fixture_is_clean() {
    let tmp = tempfile::tempdir().unwrap();
    overlay(&repo().join("tests/fixtures/base"), tmp.path());
    assert_eq!(render(tmp.path()), "");
}

#[test]
fn every_fixture_yields_exactly_its_diagnostics() {
    let root = repo().join("tests/fixtures/diagnostics");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "fixtures missing: {}", cases.len());
    let bless = std::env::var_os("SEKIMORI_BLESS").is_some();
    let mut failures = Vec::new();
    for case in cases {
        let tmp = tempfile::tempdir().unwrap();
        overlay(&repo().join("tests/fixtures/base"), tmp.path());
        overlay(&case, tmp.path());
        let got = render(tmp.path());
        let expect_path = case.join("expect.txt");
        if bless {
            std::fs::write(&expect_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expect_path).unwrap_or_default();
        if got != want {
            failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{got}",
                case.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn human_rendering_underlines_the_offending_value() {
    let tmp = tempfile::tempdir().unwrap();
    overlay(&repo().join("tests/fixtures/base"), tmp.path());
    overlay(
        &repo().join("tests/fixtures/diagnostics/grant-approver-not-chief"),
        tmp.path(),
    );
    let loaded = sekimori::policy::load(tmp.path(), at("2026-06-01"));
    let text = loaded.diagnostics.render(
        &loaded.bundle.sources,
        sekimori::policy::diag::Format::Human,
        false,
    );
    assert!(text.contains("policy::grant::approver_not_chief"), "{text}");
    assert!(text.contains("grants/s2.yaml:2:"), "{text}");
    // The underline sits under `c2`, the approver written in the file.
    let line = text
        .lines()
        .find(|l| l.contains("approved_by: c2"))
        .unwrap();
    let under = text
        .lines()
        .skip_while(|l| !l.contains("approved_by: c2"))
        .nth(1)
        .unwrap();
    let chars = |s: &str, i: usize| s[..i].chars().count();
    let col = chars(line, line.find("c2 }").unwrap());
    let mark = under.find(['─', '┬']).map(|i| chars(under, i));
    assert_eq!(mark, Some(col), "{line}\n{under}");
}
