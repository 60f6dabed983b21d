//! A YAML document as a tree of spanned nodes, built from saphyr's event parser.
//!
//! Only what policy files need and nothing that can hurt: one document per file, no
//! aliases (an alias bomb cannot expand), no custom tags, nesting at most [`MAX_DEPTH`]
//! deep, files at most [`MAX_FILE_BYTES`]. Duplicate mapping keys are errors. Scalars are
//! kept as text with their style; the typed decoder decides, per field, what a scalar
//! means (YAML 1.2: `yes` and `no` stay strings).

use super::diag::Diagnostic;
use super::source::{FileId, SourceFile, Span};
use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan};
use std::collections::HashMap;

/// Deepest nesting accepted; policy files need four or five levels.
pub const MAX_DEPTH: usize = 32;
/// Largest policy file read. One file per section keeps real files far below this.
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;
/// Most nodes in one file: bounds memory for a file of tiny flow collections.
pub const MAX_NODES: usize = 4_000_000;

pub mod codes {
    pub const SYNTAX: &str = "policy::yaml::syntax";
    pub const DUPLICATE_KEY: &str = "policy::yaml::duplicate_key";
    pub const ALIAS: &str = "policy::yaml::alias_not_allowed";
    pub const TAG: &str = "policy::yaml::tag_not_allowed";
    pub const TOO_DEEP: &str = "policy::yaml::too_deep";
    pub const TOO_LARGE: &str = "policy::yaml::too_large";
    pub const MULTIPLE_DOCUMENTS: &str = "policy::yaml::multiple_documents";
    pub const NOT_UTF8: &str = "policy::yaml::not_utf8";
    pub const COMPLEX_KEY: &str = "policy::yaml::complex_key";
}

/// A parsed node.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub struct Scalar {
    pub text: String,
    /// Plain (unquoted) scalars may be null, booleans or numbers; quoted ones are strings.
    pub plain: bool,
}

impl Scalar {
    /// YAML 1.2 core schema null: empty, `~`, `null`.
    pub fn is_null(&self) -> bool {
        self.plain && matches!(self.text.as_str(), "" | "~" | "null" | "Null" | "NULL")
    }
}

/// A mapping key: always a scalar here.
#[derive(Debug, Clone)]
pub struct Key {
    pub text: String,
    pub span: Span,
}

impl Node {
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar(s) if s.is_null() => "null",
            NodeKind::Scalar(_) => "a scalar",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }
}

enum Frame {
    Seq(Vec<Node>, Span),
    /// Entries, the key waiting for its value (and whether it is a duplicate to drop),
    /// the start, and the keys seen so far.
    Map(
        Vec<(Key, Node)>,
        Option<(Key, bool)>,
        Span,
        HashMap<String, Span>,
    ),
}

/// Parses one file into its document node. `None` with diagnostics when it cannot.
/// An empty file yields a null scalar.
pub fn parse(file_id: FileId, file: &SourceFile, diags: &mut Vec<Diagnostic>) -> Option<Node> {
    if file.text.len() > MAX_FILE_BYTES {
        diags.push(
            Diagnostic::error(
                codes::TOO_LARGE,
                Span::new(file_id, 0, 0),
                format!(
                    "file is {} bytes; the limit is {} bytes",
                    file.text.len(),
                    MAX_FILE_BYTES
                ),
            )
            .hint("split the file: one file per section under `assets/` or `grants/`"),
        );
        return None;
    }
    let span_of = |y: &YSpan| {
        let start = file.offset_of(y.start.line(), y.start.col());
        let end = file.offset_of(y.end.line(), y.end.col());
        Span::new(file_id, start, end)
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<Node> = None;
    let mut documents = 0usize;
    let mut nodes = 0usize;
    let mut parser = Parser::new_from_str(&file.text);
    loop {
        let (event, yspan) = match parser.next_event() {
            None => break,
            Some(Ok(ev)) => ev,
            Some(Err(err)) => {
                let m = err.marker();
                let at = file.offset_of(m.line(), m.col());
                diags.push(
                    Diagnostic::error(
                        codes::SYNTAX,
                        Span::new(file_id, at, at + 1),
                        format!("invalid YAML: {}", err.info()),
                    )
                    .hint("check indentation, quotes and brackets near this position"),
                );
                return None;
            }
        };
        let span = span_of(&yspan);
        let node = match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => {
                continue;
            }
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    diags.push(
                        Diagnostic::error(
                            codes::MULTIPLE_DOCUMENTS,
                            span,
                            "a policy file holds one YAML document",
                        )
                        .hint("remove the `---` separator or split the file"),
                    );
                    return None;
                }
                continue;
            }
            Event::Alias(_) => {
                diags.push(
                    Diagnostic::error(codes::ALIAS, span, "aliases (`*name`) are not allowed")
                        .hint("write the value out; policy files are reviewed line by line"),
                );
                return None;
            }
            Event::Scalar(text, style, _anchor, tag) => {
                if let Some(tag) = tag {
                    diags.push(
                        Diagnostic::error(codes::TAG, span, "YAML tags are not allowed")
                            .value(format!("{}{}", tag.handle, tag.suffix))
                            .hint("remove the tag; quote the value if it must stay a string"),
                    );
                    return None;
                }
                Node {
                    kind: NodeKind::Scalar(Scalar {
                        text: text.into_owned(),
                        plain: matches!(style, ScalarStyle::Plain),
                    }),
                    span,
                }
            }
            Event::SequenceStart(_, tag) | Event::MappingStart(_, tag) if tag.is_some() => {
                diags.push(
                    Diagnostic::error(codes::TAG, span, "YAML tags are not allowed")
                        .hint("remove the tag"),
                );
                return None;
            }
            Event::SequenceStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    diags.push(too_deep(span));
                    return None;
                }
                stack.push(Frame::Seq(Vec::new(), span));
                continue;
            }
            Event::MappingStart(..) => {
                if stack.len() >= MAX_DEPTH {
                    diags.push(too_deep(span));
                    return None;
                }
                stack.push(Frame::Map(Vec::new(), None, span, HashMap::new()));
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq(items, start)) => Node {
                    kind: NodeKind::Seq(items),
                    span: Span::new(file_id, start.start as usize, span.end as usize),
                },
                _ => return None,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map(entries, _, start, _)) => Node {
                    kind: NodeKind::Map(entries),
                    span: Span::new(file_id, start.start as usize, span.end as usize),
                },
                _ => return None,
            },
        };
        nodes += 1;
        if nodes > MAX_NODES {
            diags.push(
                Diagnostic::error(
                    codes::TOO_LARGE,
                    node.span,
                    "too many YAML nodes in one file",
                )
                .hint("split the file"),
            );
            return None;
        }
        // Attach the finished node to its parent.
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq(items, _)) => items.push(node),
            Some(Frame::Map(entries, pending, _, seen)) => match pending.take() {
                None => {
                    let NodeKind::Scalar(s) = node.kind else {
                        diags.push(
                            Diagnostic::error(
                                codes::COMPLEX_KEY,
                                node.span,
                                "a mapping key must be a plain word",
                            )
                            .hint("use `key: value`"),
                        );
                        return None;
                    };
                    let duplicate = seen.contains_key(&s.text);
                    if let Some(first) = seen.get(&s.text) {
                        let first = *first;
                        diags.push(
                            Diagnostic::error(
                                codes::DUPLICATE_KEY,
                                node.span,
                                format!("duplicate key `{}`", s.text),
                            )
                            .value(s.text.clone())
                            .label("written again here")
                            .hint(format!(
                                "keep one `{}` in this mapping (first written on line {})",
                                s.text,
                                file.line_col(first.start).0
                            )),
                        );
                    } else {
                        seen.insert(s.text.clone(), node.span);
                    }
                    *pending = Some((
                        Key {
                            text: s.text,
                            span: node.span,
                        },
                        duplicate,
                    ));
                }
                Some((key, false)) => entries.push((key, node)),
                Some((_, true)) => {}
            },
        }
    }
    Some(root.unwrap_or(Node {
        kind: NodeKind::Scalar(Scalar {
            text: String::new(),
            plain: true,
        }),
        span: Span::new(file_id, 0, 0),
    }))
}

fn too_deep(span: Span) -> Diagnostic {
    Diagnostic::error(
        codes::TOO_DEEP,
        span,
        format!("nesting deeper than {MAX_DEPTH} levels"),
    )
    .hint("policy files need only a few levels; check for runaway brackets")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> (Option<Node>, Vec<Diagnostic>) {
        let f = SourceFile::new("t.yaml", text);
        let mut d = Vec::new();
        let n = parse(0, &f, &mut d);
        (n, d)
    }

    #[test]
    fn yes_stays_a_string_and_spans_point_at_values() {
        let (n, d) = parse_str("a: yes\nb: \"3\"\n");
        assert!(d.is_empty());
        let NodeKind::Map(entries) = n.unwrap().kind else {
            panic!()
        };
        let (k, v) = &entries[1];
        assert_eq!(k.text, "b");
        let NodeKind::Scalar(s) = &v.kind else {
            panic!()
        };
        assert_eq!(s.text, "3");
        assert!(!s.plain);
        assert_eq!(v.span.start, 10);
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let (_, d) = parse_str("a: 1\nb: 2\na: 3\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].code, codes::DUPLICATE_KEY);
        assert_eq!(d[0].span.start, 10);
    }

    #[test]
    fn aliases_are_refused() {
        let (n, d) = parse_str("a: &x [1, 2]\nb: *x\n");
        assert!(n.is_none());
        assert_eq!(d[0].code, codes::ALIAS);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let (n, d) = parse_str(&text);
        assert!(n.is_none());
        // saphyr's own recursion limit may stop it first; either way a diagnostic.
        assert!(
            matches!(d[0].code, codes::TOO_DEEP | codes::SYNTAX),
            "{:?}",
            d[0]
        );
        let text = format!(
            "a: {}{}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        let (_, d) = parse_str(&text);
        assert_eq!(d[0].code, codes::TOO_DEEP);
    }

    #[test]
    fn syntax_errors_have_positions() {
        let (n, d) = parse_str("a: [1, 2\nb: 3\n");
        assert!(n.is_none());
        assert_eq!(d[0].code, codes::SYNTAX);
    }

    #[test]
    fn tags_and_multiple_documents_are_refused() {
        let (_, d) = parse_str("a: !!binary aGk=\n");
        assert_eq!(d[0].code, codes::TAG);
        let (_, d) = parse_str("a: 1\n---\nb: 2\n");
        assert_eq!(d[0].code, codes::MULTIPLE_DOCUMENTS);
    }

    #[test]
    fn empty_file_is_null() {
        let (n, d) = parse_str("");
        assert!(d.is_empty());
        assert_eq!(n.unwrap().describe(), "null");
    }
}
