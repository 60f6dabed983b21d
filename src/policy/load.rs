//! Reading a bundle directory: which files, in which order, and what to do with files
//! that cannot be read.
//!
//! `organization.yaml` and `systems.yaml` are required, `contracts.yaml` is optional;
//! `assets/`, `grants/` and `tests/` are read recursively in byte order of their relative
//! paths, which is the bundle order grants are ranked by. `.yaml` and `.yml` both count;
//! hidden entries (a leading `.`, such as a Kubernetes ConfigMap's `..data`) are skipped,
//! symbolic links are followed.

use super::decode::{self, Decoder};
use super::diag::{Diagnostic, Diagnostics};
use super::model::Bundle;
use super::source::{SourceFile, Span};
use super::yaml;
use std::path::{Path, PathBuf};

pub mod codes {
    pub const MISSING_FILE: &str = "policy::file::missing";
    pub const UNREADABLE: &str = "policy::file::unreadable";
    pub const AMBIGUOUS: &str = "policy::file::ambiguous";
    pub const UNEXPECTED: &str = "policy::file::unexpected";
    pub const TOO_MANY_FILES: &str = "policy::file::too_many";
}

/// Most YAML files read from one bundle.
pub const MAX_FILES: usize = 20_000;
const MAX_DIR_DEPTH: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Organization,
    Systems,
    Contracts,
    Assets,
    Grants,
    Tests,
}

/// Reads and decodes a bundle. Diagnostics are sorted; cross-file validation is separate
/// (`validate::validate`).
pub fn load_dir(dir: &Path) -> (Bundle, Diagnostics) {
    let mut bundle = Bundle::default();
    let mut diags = Vec::new();
    let mut files: Vec<(Kind, String, PathBuf)> = Vec::new();

    for (kind, stem, required) in [
        (Kind::Organization, "organization", true),
        (Kind::Systems, "systems", true),
        (Kind::Contracts, "contracts", false),
    ] {
        let present: Vec<String> = ["yaml", "yml"]
            .iter()
            .map(|ext| format!("{stem}.{ext}"))
            .filter(|name| dir.join(name).is_file())
            .collect();
        match present.as_slice() {
            [] if required => {
                let id = bundle
                    .sources
                    .add(SourceFile::new(format!("{stem}.yaml"), ""));
                diags.push(
                    Diagnostic::error(
                        codes::MISSING_FILE,
                        Span::new(id, 0, 0),
                        format!("`{stem}.yaml` is missing"),
                    )
                    .hint(format!(
                        "every bundle has `{stem}.yaml` at its top level ({})",
                        dir.display()
                    )),
                );
            }
            [] => {}
            [one] => files.push((kind, one.clone(), dir.join(one))),
            [first, second, ..] => {
                let id = bundle.sources.add(SourceFile::new(second.clone(), ""));
                diags.push(
                    Diagnostic::error(
                        codes::AMBIGUOUS,
                        Span::new(id, 0, 0),
                        format!("both `{first}` and `{second}` exist"),
                    )
                    .hint("keep one of them"),
                );
            }
        }
    }
    for (kind, sub) in [
        (Kind::Assets, "assets"),
        (Kind::Grants, "grants"),
        (Kind::Tests, "tests"),
    ] {
        let mut found = Vec::new();
        collect_yaml(&dir.join(sub), sub, 0, &mut found, &mut diags, &mut bundle);
        found.sort_by(|a: &(String, PathBuf), b| a.0.as_bytes().cmp(b.0.as_bytes()));
        files.extend(found.into_iter().map(|(rel, path)| (kind, rel, path)));
    }
    // Top-level YAML files nobody reads are probably a mistake (a misspelt name).
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut stray: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_yaml(n) && !n.starts_with('.'))
            .filter(|n| {
                !["organization", "systems", "contracts"]
                    .iter()
                    .any(|s| n == &format!("{s}.yaml") || n == &format!("{s}.yml"))
            })
            .collect();
        stray.sort();
        for name in stray {
            let id = bundle.sources.add(SourceFile::new(name.clone(), ""));
            diags.push(
                Diagnostic::warning(codes::UNEXPECTED, Span::new(id, 0, 0), format!("`{name}` is not read"))
                    .value(name)
                    .hint("top-level files are organization.yaml, systems.yaml and contracts.yaml; assets, grants and tests go in their directories"),
            );
        }
    }

    if files.len() > MAX_FILES {
        let id = bundle.sources.add(SourceFile::new(String::from("."), ""));
        diags.push(
            Diagnostic::error(
                codes::TOO_MANY_FILES,
                Span::new(id, 0, 0),
                format!("{} YAML files; the limit is {MAX_FILES}", files.len()),
            )
            .hint("merge small files: one file per section is the convention"),
        );
        files.truncate(MAX_FILES);
    }

    for (kind, rel, path) in files {
        let Some((file_id, root)) = read_and_parse(&rel, &path, &mut bundle, &mut diags) else {
            continue;
        };
        let _ = file_id;
        let mut d = Decoder { diags: &mut diags };
        match kind {
            Kind::Organization => bundle.organization = decode::organization(&mut d, &root),
            Kind::Systems => bundle.systems.extend(decode::systems(&mut d, &root)),
            Kind::Contracts => bundle.contracts.extend(decode::contracts(&mut d, &root)),
            Kind::Assets => bundle.assets.extend(decode::assets(&mut d, &root)),
            Kind::Grants => bundle.grants.extend(decode::grants(&mut d, &root)),
            Kind::Tests => bundle.tests.extend(decode::tests(&mut d, &root)),
        }
    }
    let mut out = Diagnostics::default();
    out.extend(diags);
    (bundle, out)
}

fn is_yaml(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

fn collect_yaml(
    dir: &Path,
    rel: &str,
    depth: usize,
    out: &mut Vec<(String, PathBuf)>,
    diags: &mut Vec<Diagnostic>,
    bundle: &mut Bundle,
) {
    if depth > MAX_DIR_DEPTH || out.len() > MAX_FILES {
        return;
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            let id = bundle.sources.add(SourceFile::new(rel.to_string(), ""));
            diags.push(
                Diagnostic::error(
                    codes::UNREADABLE,
                    Span::new(id, 0, 0),
                    format!("directory cannot be read: {}", io_reason(&e)),
                )
                .hint("check the directory's permissions"),
            );
            return;
        }
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let child_rel = format!("{rel}/{name}");
        // `metadata` follows symbolic links (ConfigMap mounts are links into `..data`).
        // A policy file that cannot be read is an error, never silently left out: a
        // missing grants file would quietly change decisions.
        let unreadable = |diags: &mut Vec<Diagnostic>, bundle: &mut Bundle, why: String| {
            let id = bundle.sources.add(SourceFile::new(child_rel.clone(), ""));
            diags.push(
                Diagnostic::error(codes::UNREADABLE, Span::new(id, 0, 0), why)
                    .hint("a policy file must be a regular, readable file (or a link to one)"),
            );
        };
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() && is_yaml(&name) => unreadable(
                diags,
                bundle,
                String::from("is a directory where a policy file is expected"),
            ),
            Ok(m) if m.is_dir() => collect_yaml(&path, &child_rel, depth + 1, out, diags, bundle),
            Ok(m) if m.is_file() && is_yaml(&name) => out.push((child_rel, path)),
            Ok(_) if is_yaml(&name) => unreadable(
                diags,
                bundle,
                String::from("is not a regular file (a pipe, socket or device)"),
            ),
            Err(e) if is_yaml(&name) => unreadable(
                diags,
                bundle,
                format!("file cannot be read: {}", io_reason(&e)),
            ),
            _ => {}
        }
    }
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => String::from("permission denied"),
        std::io::ErrorKind::NotFound => String::from("not found"),
        _ => e.kind().to_string(),
    }
}

fn read_and_parse(
    rel: &str,
    path: &Path,
    bundle: &mut Bundle,
    diags: &mut Vec<Diagnostic>,
) -> Option<(u32, yaml::Node)> {
    let bytes = match read_limited(path) {
        Ok(b) => b,
        Err(e) => {
            let id = bundle.sources.add(SourceFile::new(rel.to_string(), ""));
            diags.push(
                Diagnostic::error(
                    codes::UNREADABLE,
                    Span::new(id, 0, 0),
                    format!("file cannot be read: {}", io_reason(&e)),
                )
                .hint("check that the file exists and is readable by the sekimori user"),
            );
            return None;
        }
    };
    if bytes.len() > yaml::MAX_FILE_BYTES {
        let id = bundle.sources.add(SourceFile::new(rel.to_string(), ""));
        diags.push(
            Diagnostic::error(
                yaml::codes::TOO_LARGE,
                Span::new(id, 0, 0),
                format!("file is larger than {} bytes", yaml::MAX_FILE_BYTES),
            )
            .hint("split the file: one file per section under `assets/` or `grants/`"),
        );
        return None;
    }
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid_up_to = e.utf8_error().valid_up_to();
            let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
            // Offsets in the lossy text equal the original's up to the first bad byte.
            let id = bundle.sources.add(SourceFile::new(rel.to_string(), lossy));
            diags.push(
                Diagnostic::error(
                    yaml::codes::NOT_UTF8,
                    Span::new(id, valid_up_to, valid_up_to + 1),
                    "file is not valid UTF-8",
                )
                .label("first invalid byte")
                .hint("save the file as UTF-8 (policy files are UTF-8; Shift_JIS is not read)"),
            );
            return None;
        }
    };
    let text = text
        .strip_prefix('\u{feff}')
        .map(str::to_string)
        .unwrap_or(text);
    let file = SourceFile::new(rel.to_string(), text);
    let mut local = Vec::new();
    let id = bundle.sources.add(file);
    let root = bundle
        .sources
        .get(id)
        .and_then(|f| yaml::parse(id, f, &mut local));
    diags.extend(local);
    root.map(|r| (id, r))
}

/// Reads at most one byte more than the YAML limit, so a 10 GB file costs nothing.
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    file.take(yaml::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}
