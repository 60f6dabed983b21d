//! Diagnostics for admins: a stable code, a position, the offending value and a hint.
//!
//! Diagnostics are values, collected into one [`Diagnostics`] set, de-duplicated and sorted
//! by file, line and column, and rendered as `human` (source snippet underlined, via
//! miette), `plain` (one line each, for editors and grep) or `json`.

use super::source::{Location, Sources, Span};
use serde::Serialize;
use std::fmt::Write as _;

/// How bad a finding is: errors block a bundle, warnings do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about the bundle.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable code, e.g. `policy::grant::approver_not_chief`; documented in
    /// `docs/policy-format.md`.
    pub code: &'static str,
    /// What is wrong, lowercase, without a final period; user input in backticks.
    pub message: String,
    pub span: Span,
    /// The offending value as written, when there is one.
    pub value: Option<String>,
    /// Short text under the underlined snippet.
    pub label: String,
    /// How to fix it.
    pub hint: String,
}

impl Diagnostic {
    pub fn error(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            code,
            message: message.into(),
            span,
            value: None,
            label: String::from("here"),
            hint: String::new(),
        }
    }

    pub fn warning(code: &'static str, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, span, message)
        }
    }

    pub fn value(mut self, value: impl Into<String>) -> Self {
        self.value = Some(value.into());
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = hint.into();
        self
    }
}

/// Output formats of diagnostics (`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Plain,
    Json,
}

/// Most errors, and separately most warnings, kept per bundle: a 10 MB file of nonsense
/// must not produce a gigabyte of output. The overflow is counted and reported.
pub const MAX_DIAGNOSTICS: usize = 1000;

/// A sorted, de-duplicated set of diagnostics.
#[derive(Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
    kept: [usize; 2],
    dropped: [usize; 2],
}

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        let i = d.severity as usize;
        if self.kept[i] >= MAX_DIAGNOSTICS {
            self.dropped[i] += 1;
        } else {
            self.kept[i] += 1;
            self.items.push(d);
        }
    }

    pub fn extend(&mut self, ds: impl IntoIterator<Item = Diagnostic>) {
        for d in ds {
            self.push(d);
        }
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|d| d.severity == Severity::Error)
            || self.dropped[Severity::Error as usize] > 0
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    pub fn all(&self) -> &[Diagnostic] {
        &self.items
    }

    /// How many were left out past [`MAX_DIAGNOSTICS`].
    pub fn dropped(&self) -> usize {
        self.dropped.iter().sum()
    }

    /// Sorts by file path, line, column, then severity and code; removes exact duplicates.
    pub fn finish(&mut self, sources: &Sources) {
        let mut keyed: Vec<(Location, Diagnostic)> = self
            .items
            .drain(..)
            .map(|d| (sources.location(d.span), d))
            .collect();
        keyed.sort_by(|(la, a), (lb, b)| {
            (la, a.severity, a.code, &a.message).cmp(&(lb, b.severity, b.code, &b.message))
        });
        keyed.dedup_by(|(la, a), (lb, b)| la == lb && a == b);
        self.items = keyed.into_iter().map(|(_, d)| d).collect();
    }

    /// Renders every diagnostic and a summary line.
    pub fn render(&self, sources: &Sources, format: Format, color: bool) -> String {
        match format {
            Format::Json => self.render_json(sources),
            Format::Plain => {
                let mut out = String::new();
                for d in &self.items {
                    let _ = writeln!(out, "{}", plain_line(sources, d));
                }
                out.push_str(&self.summary());
                out.push('\n');
                out
            }
            Format::Human => {
                let mut out = String::new();
                for d in &self.items {
                    out.push_str(&render_human(sources, d, color));
                }
                out.push_str(&self.summary());
                out.push('\n');
                out
            }
        }
    }

    pub fn summary(&self) -> String {
        let errors = self.errors().count();
        let warnings = self.warnings().count();
        let mut s = format!(
            "{errors} error{}, {warnings} warning{}",
            plural(errors),
            plural(warnings)
        );
        let [errors_dropped, warnings_dropped] = self.dropped;
        if errors_dropped + warnings_dropped > 0 {
            let _ = write!(
                s,
                " shown; {errors_dropped} more errors and {warnings_dropped} more warnings not shown: fix these first"
            );
        }
        s
    }

    fn render_json(&self, sources: &Sources) -> String {
        #[derive(Serialize)]
        struct JsonDiag<'a> {
            severity: Severity,
            code: &'a str,
            message: &'a str,
            file: String,
            line: usize,
            column: usize,
            value: Option<&'a str>,
            hint: &'a str,
        }
        #[derive(Serialize)]
        struct JsonOut<'a> {
            errors: usize,
            warnings: usize,
            not_shown: usize,
            diagnostics: Vec<JsonDiag<'a>>,
        }
        let diagnostics = self
            .items
            .iter()
            .map(|d| {
                let loc = sources.location(d.span);
                JsonDiag {
                    severity: d.severity,
                    code: d.code,
                    message: &d.message,
                    file: loc.path,
                    line: loc.line,
                    column: loc.column,
                    value: d.value.as_deref(),
                    hint: &d.hint,
                }
            })
            .collect();
        let out = JsonOut {
            errors: self.errors().count(),
            warnings: self.warnings().count(),
            not_shown: self.dropped(),
            diagnostics,
        };
        let mut text = serde_json::to_string_pretty(&out).unwrap_or_else(|_| String::from("{}"));
        text.push('\n');
        text
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `file:line:col: error[code]: message (value: `x`) — hint: ...`
pub fn plain_line(sources: &Sources, d: &Diagnostic) -> String {
    let loc = sources.location(d.span);
    let severity = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let mut line = format!("{loc}: {severity}[{}]: {}", d.code, escape(&d.message));
    if let Some(v) = &d.value {
        let _ = write!(line, " (value: `{}`)", escape(v));
    }
    if !d.hint.is_empty() {
        let _ = write!(line, " — hint: {}", escape(&d.hint));
    }
    line
}

/// Control characters from a hostile file must not reach a terminal raw.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct MietteDiag {
    message: String,
    code: String,
    severity: miette::Severity,
    help: Option<String>,
    src: miette::NamedSource<String>,
    span: miette::SourceSpan,
    label: String,
}

impl miette::Diagnostic for MietteDiag {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(&self.code))
    }
    fn severity(&self) -> Option<miette::Severity> {
        Some(self.severity)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(
            miette::LabeledSpan::new_with_span(Some(self.label.clone()), self.span),
        )))
    }
}

/// Largest file whose snippet is rendered; beyond it the plain line is shown.
const MAX_SNIPPET_SOURCE: usize = 4 * 1024 * 1024;

fn render_human(sources: &Sources, d: &Diagnostic, color: bool) -> String {
    let loc = sources.location(d.span);
    let file = sources.get(d.span.file);
    let Some(file) = file.filter(|f| f.text.len() <= MAX_SNIPPET_SOURCE) else {
        return format!("{}\n\n", plain_line(sources, d));
    };
    let mut message = format!("{}: {}", loc, escape(&d.message));
    if let Some(v) = &d.value {
        let _ = write!(message, " (value: `{}`)", escape(v));
    }
    let len = (d.span.end.saturating_sub(d.span.start)) as usize;
    let report = MietteDiag {
        message,
        code: d.code.to_string(),
        severity: match d.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        },
        help: (!d.hint.is_empty()).then(|| escape(&d.hint)),
        // Control characters in the snippet are escaped like everything else shown.
        src: miette::NamedSource::new(&file.path, file.text.to_string()),
        span: (d.span.start as usize, len).into(),
        label: escape(&d.label),
    };
    let theme = if color {
        miette::GraphicalTheme::unicode()
    } else {
        miette::GraphicalTheme::unicode_nocolor()
    };
    let handler = miette::GraphicalReportHandler::new_themed(theme).with_width(100);
    let mut out = String::new();
    if handler.render_report(&mut out, &report).is_err() {
        return format!("{}\n\n", plain_line(sources, d));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::source::SourceFile;

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.add(SourceFile::new("b.yaml", "x: 1\ny: 2\n"));
        s.add(SourceFile::new("a.yaml", "k: v\n"));
        s
    }

    #[test]
    fn sorted_by_file_line_column_and_deduplicated() {
        let s = sources();
        let mut ds = Diagnostics::default();
        ds.push(Diagnostic::error("c2", Span::new(0, 5, 6), "second line"));
        ds.push(Diagnostic::error("c1", Span::new(0, 0, 1), "first line"));
        ds.push(Diagnostic::warning("c3", Span::new(1, 0, 1), "other file"));
        ds.push(Diagnostic::error("c1", Span::new(0, 0, 1), "first line"));
        ds.finish(&s);
        let codes: Vec<_> = ds.all().iter().map(|d| d.code).collect();
        assert_eq!(codes, ["c3", "c1", "c2"]);
        let plain = ds.render(&s, Format::Plain, false);
        assert!(
            plain.starts_with("a.yaml:1:1: warning[c3]: other file"),
            "{plain}"
        );
        assert!(plain.contains("b.yaml:2:1: error[c2]"), "{plain}");
        assert!(plain.ends_with("2 errors, 1 warning\n"), "{plain}");
    }

    #[test]
    fn human_rendering_underlines_the_value() {
        let s = sources();
        let mut ds = Diagnostics::default();
        ds.push(
            Diagnostic::error("policy::test", Span::new(0, 8, 9), "bad value")
                .label("this")
                .hint("use 3"),
        );
        ds.finish(&s);
        let out = ds.render(&s, Format::Human, false);
        assert!(out.contains("b.yaml:2:4: bad value"), "{out}");
        assert!(out.contains("y: 2"), "{out}");
        assert!(out.contains("help: use 3"), "{out}");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\u{1b}[31mb\u{202e}"), "a\\u{1b}[31mb\\u{202e}");
    }

    #[test]
    fn json_is_machine_readable() {
        let s = sources();
        let mut ds = Diagnostics::default();
        ds.push(Diagnostic::error("c", Span::new(1, 3, 4), "m").value("v"));
        ds.finish(&s);
        let v: serde_json::Value =
            serde_json::from_str(&ds.render(&s, Format::Json, false)).unwrap();
        assert_eq!(v["errors"], 1);
        assert_eq!(v["diagnostics"][0]["file"], "a.yaml");
        assert_eq!(v["diagnostics"][0]["column"], 4);
        assert_eq!(v["diagnostics"][0]["value"], "v");
    }
}
