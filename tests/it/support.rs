//! Helpers shared by the integration tests.

use sekimori::time::{Instant, parse_policy_time};
use std::path::{Path, PathBuf};

pub fn at(text: &str) -> Instant {
    parse_policy_time(text).unwrap()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Copies `from` into `to` recursively; a file `x.delete` removes `x` instead.
pub fn overlay(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let dest = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            overlay(&entry.path(), &dest);
        } else if let Some(target) = name.strip_suffix(".delete") {
            let _ = std::fs::remove_file(to.join(target));
        } else if name != "expect.txt" {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}
