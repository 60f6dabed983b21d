//! Source files of a bundle and positions inside them.
//!
//! A [`Span`] is a byte range in one file of a [`Sources`] set; line and column are
//! computed from it when a diagnostic is shown, so spans stay two integers wide.

use std::sync::Arc;

/// Index of a file in [`Sources`].
pub type FileId = u32;

/// A byte range in one source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// A span of something no file says (runtime state declared through the API).
    pub const NONE: Span = Span {
        file: FileId::MAX,
        start: 0,
        end: 0,
    };

    pub fn is_none(&self) -> bool {
        self.file == FileId::MAX
    }

    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Span {
            file,
            start: clamp(start),
            end: clamp(end.max(start)),
        }
    }
}

/// One file of the bundle: its path relative to the bundle root and its text.
#[derive(Debug)]
pub struct SourceFile {
    /// Path relative to the bundle directory, with `/` separators (e.g. `assets/shimin.yaml`).
    pub path: String,
    pub text: Arc<str>,
    line_starts: Vec<usize>,
}

impl SourceFile {
    pub fn new(path: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        let text: Arc<str> = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceFile {
            path: path.into(),
            text,
            line_starts,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: u32) -> (usize, usize) {
        let offset = (offset as usize).min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, column + 1)
    }

    /// Byte offset of a 1-based line and a 0-based column in characters.
    pub fn offset_of(&self, line: usize, col_chars: usize) -> usize {
        let Some(&start) = self.line_starts.get(line.saturating_sub(1)) else {
            return self.text.len();
        };
        let rest = self.text.get(start..).unwrap_or("");
        let within = rest
            .char_indices()
            .nth(col_chars)
            .map_or(rest.len(), |(i, _)| i);
        start + within
    }

    /// The text of a span, if it lies inside this file.
    pub fn slice(&self, span: Span) -> &str {
        self.text
            .get(span.start as usize..span.end as usize)
            .unwrap_or("")
    }
}

/// The files of one bundle, addressed by [`FileId`].
#[derive(Debug, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    pub fn add(&mut self, file: SourceFile) -> FileId {
        self.files.push(file);
        FileId::try_from(self.files.len() - 1).unwrap_or(FileId::MAX)
    }

    pub fn get(&self, id: FileId) -> Option<&SourceFile> {
        self.files.get(id as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files
            .iter()
            .enumerate()
            .map(|(i, f)| (FileId::try_from(i).unwrap_or(FileId::MAX), f))
    }

    /// `path:line:col` of a span, the way admins and editors read positions.
    pub fn location(&self, span: Span) -> Location {
        match self.get(span.file) {
            Some(file) => {
                let (line, column) = file.line_col(span.start);
                Location {
                    path: file.path.clone(),
                    line,
                    column,
                }
            }
            None => Location {
                path: String::from("<unknown>"),
                line: 0,
                column: 0,
            },
        }
    }
}

/// A resolved position: file path, 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Location {
    pub path: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.path, self.line, self.column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_count_characters() {
        let f = SourceFile::new("a.yaml", "ab\n市民課: x\n");
        let off = f.offset_of(2, 3);
        assert_eq!(&f.text[off..off + 1], ":");
        assert_eq!(f.line_col(off as u32), (2, 4));
        assert_eq!(f.line_col(0), (1, 1));
    }
}
