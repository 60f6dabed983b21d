//! YAML nodes → typed model, one file kind at a time.
//!
//! Every problem becomes a diagnostic and decoding goes on, so an admin sees all of a
//! file's problems at once. A field that cannot be decoded is left out of the model and
//! the entry that needs it is dropped; cross-file rules live in `validate`.

use super::diag::Diagnostic;
use super::model::*;
use super::source::Span;
use super::yaml::{Key, Node, NodeKind, Scalar};
use crate::time::{Instant, parse_policy_time};
use chrono::NaiveDate;

pub mod codes {
    pub const UNKNOWN_KEY: &str = "policy::schema::unknown_key";
    pub const MISSING_FIELD: &str = "policy::schema::missing_field";
    pub const WRONG_TYPE: &str = "policy::schema::wrong_type";
    pub const EMPTY_LIST: &str = "policy::schema::empty_list";
    pub const INVALID_ID: &str = "policy::schema::invalid_id";
    pub const INVALID_TEXT: &str = "policy::schema::invalid_text";
    pub const INVALID_VALUE: &str = "policy::schema::invalid_value";
    pub const INVALID_TIME: &str = "policy::schema::invalid_time";
    pub const UNKNOWN_ACTION: &str = "policy::schema::unknown_action";
    pub const NO_CISO: &str = "policy::organization::no_ciso";
    pub const NO_CHIEF: &str = "policy::organization::section_without_chief";
}

/// Decoding context: collects diagnostics.
pub struct Decoder<'d> {
    pub diags: &'d mut Vec<Diagnostic>,
}

/// A mapping being read: tracks which keys were used so the rest can be reported unknown.
pub struct MapReader<'n> {
    span: Span,
    entries: &'n [(Key, Node)],
    used: Vec<bool>,
}

impl<'n> MapReader<'n> {
    /// Returns the value of `key`, marking it used.
    pub fn get(&mut self, key: &str) -> Option<&'n Node> {
        let i = self.entries.iter().position(|(k, _)| k.text == key)?;
        if let Some(u) = self.used.get_mut(i) {
            *u = true;
        }
        self.entries.get(i).map(|(_, v)| v)
    }

    /// Like [`get`](Self::get), but a missing key is reported with `code`.
    pub fn required(&mut self, d: &mut Decoder, key: &str, code: &'static str) -> Option<&'n Node> {
        let found = self.get(key);
        if found.is_none() {
            d.diags.push(
                Diagnostic::error(code, self.span, format!("missing required field `{key}`"))
                    .label("in this entry")
                    .hint(format!("add `{key}:` to this entry")),
            );
        }
        found
    }

    /// Reports every key that was not read.
    pub fn finish(self, d: &mut Decoder, allowed: &[&str]) {
        for ((key, _), used) in self.entries.iter().zip(self.used) {
            if !used {
                let hint = match closest(&key.text, allowed) {
                    Some(near) => format!(
                        "did you mean `{near}`? allowed keys: {}",
                        allowed.join(", ")
                    ),
                    None => format!("allowed keys: {}", allowed.join(", ")),
                };
                d.diags.push(
                    Diagnostic::error(
                        codes::UNKNOWN_KEY,
                        key.span,
                        format!("unknown key `{}`", key.text),
                    )
                    .value(key.text.clone())
                    .hint(hint),
                );
            }
        }
    }

    pub fn span(&self) -> Span {
        self.span
    }
}

/// The allowed word nearest to `word` by edit distance, if near enough to be a typo.
fn closest<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(word, a), *a))
        .filter(|(dist, a)| *dist <= 2.max(a.len() / 4))
        .min()
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            let ins = cur[j] + 1;
            let del = prev[j + 1] + 1;
            cur.push(sub.min(ins).min(del));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// `[a-z0-9][a-z0-9._-]*`
pub fn is_valid_id(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
        && text.len() <= 128
}

/// Non-empty, no control characters (user ids, purposes).
pub fn is_valid_text(text: &str) -> bool {
    !text.trim().is_empty() && !text.chars().any(char::is_control) && text.len() <= 256
}

impl Decoder<'_> {
    fn wrong_type(&mut self, node: &Node, expected: &str) {
        self.diags.push(
            Diagnostic::error(
                codes::WRONG_TYPE,
                node.span,
                format!("expected {expected}, found {}", node.describe()),
            )
            .hint(format!("write {expected} here")),
        );
    }

    pub fn map<'n>(&mut self, node: &'n Node, what: &str) -> Option<MapReader<'n>> {
        match &node.kind {
            NodeKind::Map(entries) => Some(MapReader {
                span: node.span,
                entries,
                used: vec![false; entries.len()],
            }),
            _ => {
                self.wrong_type(node, &format!("a mapping ({what})"));
                None
            }
        }
    }

    pub fn seq<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        match &node.kind {
            NodeKind::Seq(items) => Some(items),
            _ => {
                self.wrong_type(node, &format!("a list ({what})"));
                None
            }
        }
    }

    /// A non-empty list; an empty one is reported.
    pub fn nonempty_seq<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [Node]> {
        let items = self.seq(node, what)?;
        if items.is_empty() {
            self.diags.push(
                Diagnostic::error(
                    codes::EMPTY_LIST,
                    node.span,
                    format!("`{what}` may not be empty"),
                )
                .hint("name at least one entry, or remove the field if it is optional"),
            );
            return None;
        }
        Some(items)
    }

    fn scalar<'n>(&mut self, node: &'n Node, expected: &str) -> Option<&'n Scalar> {
        match &node.kind {
            NodeKind::Scalar(s) if !s.is_null() => Some(s),
            _ => {
                self.wrong_type(node, expected);
                None
            }
        }
    }

    /// Any non-null scalar as text (numbers are text too: `3` = `"3"`).
    pub fn string(&mut self, node: &Node) -> Option<Spanned<String>> {
        let s = self.scalar(node, "a string")?;
        Some(Spanned::new(s.text.clone(), node.span))
    }

    /// Free text such as a name or a note: any scalar; null means absent.
    pub fn optional_text(&mut self, node: Option<&Node>) -> Option<String> {
        let node = node?;
        match &node.kind {
            NodeKind::Scalar(s) if s.is_null() => None,
            _ => self.string(node).map(|s| s.value),
        }
    }

    /// An id of a section, system, asset, contract or grant.
    pub fn id(&mut self, node: &Node) -> Option<Spanned<String>> {
        let s = self.string(node)?;
        if !is_valid_id(&s.value) {
            self.diags.push(
                Diagnostic::error(codes::INVALID_ID, node.span, format!("`{}` is not a valid id", s.value))
                    .value(s.value.clone())
                    .hint("ids are lowercase ASCII: a letter or digit, then letters, digits, `.`, `_` or `-` (at most 128)"),
            );
            return None;
        }
        Some(s)
    }

    /// A user id or purpose: any non-empty string without control characters.
    pub fn text(&mut self, node: &Node) -> Option<Spanned<String>> {
        let s = self.string(node)?;
        if !is_valid_text(&s.value) {
            self.diags.push(
                Diagnostic::error(
                    codes::INVALID_TEXT,
                    node.span,
                    "must be a non-empty string without control characters (at most 256 bytes)",
                )
                .value(s.value.clone())
                .hint("remove control characters and surrounding blanks"),
            );
            return None;
        }
        Some(s)
    }

    pub fn bool(&mut self, node: &Node) -> Option<Spanned<bool>> {
        let s = self.scalar(node, "`true` or `false`")?;
        let value = match (s.plain, s.text.as_str()) {
            (true, "true" | "True" | "TRUE") => true,
            (true, "false" | "False" | "FALSE") => false,
            _ => {
                self.diags.push(
                    Diagnostic::error(codes::WRONG_TYPE, node.span, "expected `true` or `false`")
                        .value(s.text.clone())
                        .hint("YAML 1.2: `yes`/`no` are strings here; write `true` or `false` without quotes"),
                );
                return None;
            }
        };
        Some(Spanned::new(value, node.span))
    }

    /// A value from a fixed vocabulary.
    pub fn word<T>(
        &mut self,
        node: &Node,
        what: &str,
        names: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<Spanned<T>> {
        let s = self.string(node)?;
        match parse(&s.value) {
            Some(v) => Some(Spanned::new(v, node.span)),
            None => {
                self.diags.push(
                    Diagnostic::error(
                        codes::INVALID_VALUE,
                        node.span,
                        format!("unknown {what} `{}`", s.value),
                    )
                    .value(s.value.clone())
                    .hint(format!("use one of: {}", names.join(", "))),
                );
                None
            }
        }
    }

    pub fn action(&mut self, node: &Node) -> Option<Spanned<Action>> {
        let s = self.string(node)?;
        match Action::parse(&s.value) {
            Some(a) => Some(Spanned::new(a, node.span)),
            None => {
                let hint = match closest(&s.value, &Action::NAMES) {
                    Some(near) => format!(
                        "did you mean `{near}`? actions: {}",
                        Action::NAMES.join(", ")
                    ),
                    None => format!("actions: {}", Action::NAMES.join(", ")),
                };
                self.diags.push(
                    Diagnostic::error(
                        codes::UNKNOWN_ACTION,
                        node.span,
                        format!("unknown action `{}`", s.value),
                    )
                    .value(s.value.clone())
                    .hint(hint),
                );
                None
            }
        }
    }

    /// A point in time: a JST date or an RFC 3339 timestamp (JST without offset).
    pub fn time(&mut self, node: &Node) -> Option<Spanned<Instant>> {
        let s = self.string(node)?;
        match parse_policy_time(&s.value) {
            Some(t) => Some(Spanned::new(t, node.span)),
            None => {
                self.diags.push(
                    Diagnostic::error(codes::INVALID_TIME, node.span, format!("`{}` is not a date or time", s.value))
                        .value(s.value.clone())
                        .hint("write a date `2026-04-01` (00:00 JST) or a timestamp `2026-04-01T09:00:00+09:00`"),
                );
                None
            }
        }
    }

    pub fn date(&mut self, node: &Node) -> Option<Spanned<NaiveDate>> {
        let t = self.time(node)?;
        Some(Spanned::new(crate::time::jst_date(t.value), t.span))
    }

    /// A list whose items are each decoded by `item`; failed items are left out.
    pub fn list<T>(
        &mut self,
        node: &Node,
        what: &str,
        nonempty: bool,
        mut item: impl FnMut(&mut Self, &Node) -> Option<T>,
    ) -> Option<Vec<T>> {
        let items = if nonempty {
            self.nonempty_seq(node, what)?
        } else {
            self.seq(node, what)?
        };
        Some(items.iter().filter_map(|n| item(self, n)).collect())
    }

    /// A confidentiality/integrity/availability level: numbers or strings (`3` = `"3"`).
    pub fn level(&mut self, node: &Node) -> Option<Spanned<String>> {
        let s = self.string(node)?;
        Some(Spanned::new(s.value.trim().to_string(), s.span))
    }
}

/// `organization.yaml`
pub fn organization(d: &mut Decoder, root: &Node) -> Option<Organization> {
    let mut m = d.map(root, "organization.yaml")?;
    let scheme = m
        .required(d, "scheme", codes::MISSING_FIELD)
        .and_then(|n| d.word(n, "classification scheme", &Scheme::NAMES, Scheme::parse));
    let city = d.optional_text(m.get("city"));
    let ciso = m
        .required(d, "ciso", codes::NO_CISO)
        .and_then(|n| d.text(n));
    let departments = m
        .required(d, "departments", codes::MISSING_FIELD)
        .and_then(|n| d.list(n, "departments", true, department))
        .unwrap_or_default();
    m.finish(d, &["scheme", "city", "ciso", "departments"]);
    Some(Organization {
        scheme: scheme?,
        city,
        ciso,
        departments,
    })
}

fn department(d: &mut Decoder, node: &Node) -> Option<Department> {
    let mut m = d.map(node, "a department")?;
    let id = m
        .required(d, "id", codes::MISSING_FIELD)
        .and_then(|n| d.id(n));
    let name = d.optional_text(m.get("name"));
    let dept_id = id.as_ref().map(|i| i.value.clone()).unwrap_or_default();
    let sections = m
        .required(d, "sections", codes::MISSING_FIELD)
        .and_then(|n| d.list(n, "sections", true, |d, n| section(d, n, &dept_id)))
        .unwrap_or_default();
    m.finish(d, &["id", "name", "sections"]);
    Some(Department {
        id: id?,
        name,
        sections,
    })
}

fn section(d: &mut Decoder, node: &Node, department: &str) -> Option<Section> {
    let mut m = d.map(node, "a section")?;
    let id = m
        .required(d, "id", codes::MISSING_FIELD)
        .and_then(|n| d.id(n));
    let name = d.optional_text(m.get("name"));
    let chief = m
        .required(d, "chief", codes::NO_CHIEF)
        .and_then(|n| d.text(n));
    m.finish(d, &["id", "name", "chief"]);
    Some(Section {
        id: id?,
        name,
        chief: chief?,
        department: department.to_string(),
    })
}

/// A file whose root is `{ <key>: [entries] }`.
fn entries<T>(
    d: &mut Decoder,
    root: &Node,
    key: &str,
    mut item: impl FnMut(&mut Decoder, &Node) -> Option<T>,
) -> Vec<T> {
    if let NodeKind::Scalar(s) = &root.kind {
        if s.is_null() {
            return Vec::new();
        }
    }
    let Some(mut m) = d.map(root, &format!("with a `{key}:` list")) else {
        return Vec::new();
    };
    let out = match m.get(key) {
        Some(n) if matches!(&n.kind, NodeKind::Scalar(s) if s.is_null()) => Vec::new(),
        Some(n) => d.list(n, key, false, &mut item).unwrap_or_default(),
        None => {
            d.diags.push(
                Diagnostic::error(
                    codes::MISSING_FIELD,
                    m.span(),
                    format!("missing required field `{key}`"),
                )
                .hint(format!("the file holds a `{key}:` list")),
            );
            Vec::new()
        }
    };
    m.finish(d, &[key]);
    out
}

/// `systems.yaml`
pub fn systems(d: &mut Decoder, root: &Node) -> Vec<System> {
    entries(d, root, "systems", |d, node| {
        let mut m = d.map(node, "a system")?;
        let id = m
            .required(d, "id", codes::MISSING_FIELD)
            .and_then(|n| d.id(n));
        let name = d.optional_text(m.get("name"));
        let owner = m
            .required(d, "owner", codes::MISSING_FIELD)
            .and_then(|n| d.id(n));
        let zone = m
            .required(d, "zone", codes::MISSING_FIELD)
            .and_then(|n| d.word(n, "zone", &Zone::NAMES, Zone::parse));
        let identity = m
            .required(d, "identity", codes::MISSING_FIELD)
            .and_then(|n| d.text(n));
        m.finish(d, &["id", "name", "owner", "zone", "identity"]);
        Some(System {
            id: id?,
            name,
            owner: owner?,
            zone: zone?,
            identity: identity?,
        })
    })
}

/// `assets/**/*.yaml`
pub fn assets(d: &mut Decoder, root: &Node) -> Vec<Asset> {
    entries(d, root, "assets", |d, node| {
        let mut m = d.map(node, "an asset")?;
        let id = m
            .required(d, "id", codes::MISSING_FIELD)
            .and_then(|n| d.id(n));
        let name = d.optional_text(m.get("name"));
        let owner = m
            .required(d, "owner", codes::MISSING_FIELD)
            .and_then(|n| d.id(n));
        let systems = m
            .required(d, "systems", codes::MISSING_FIELD)
            .and_then(|n| d.list(n, "systems", true, |d, n| d.id(n)));
        let confidentiality = m
            .required(d, "confidentiality", codes::MISSING_FIELD)
            .and_then(|n| d.level(n));
        let integrity = m
            .required(d, "integrity", codes::MISSING_FIELD)
            .and_then(|n| d.level(n));
        let availability = m
            .required(d, "availability", codes::MISSING_FIELD)
            .and_then(|n| d.level(n));
        let personal_info = m
            .get("personal_info")
            .and_then(|n| d.bool(n))
            .is_some_and(|b| b.value);
        let my_number = match m.get("my_number") {
            Some(n) => d.bool(n)?,
            None => Spanned::new(false, m.span()),
        };
        let classified_by = m.get("classified_by").and_then(|n| d.text(n));
        let classified_at = m.get("classified_at").and_then(|n| d.date(n));
        let review_by = m.get("review_by").and_then(|n| d.date(n));
        m.finish(
            d,
            &[
                "id",
                "name",
                "owner",
                "systems",
                "confidentiality",
                "integrity",
                "availability",
                "personal_info",
                "my_number",
                "classified_by",
                "classified_at",
                "review_by",
            ],
        );
        Some(Asset {
            id: id?,
            name,
            owner: owner?,
            systems: systems?,
            confidentiality: confidentiality?,
            integrity: integrity?,
            availability: availability?,
            personal_info,
            my_number,
            classified_by,
            classified_at,
            review_by,
            span: node.span,
        })
    })
}

/// `contracts.yaml`
pub fn contracts(d: &mut Decoder, root: &Node) -> Vec<Contract> {
    entries(d, root, "contracts", |d, node| {
        let mut m = d.map(node, "a contract")?;
        let id = m
            .required(d, "id", codes::MISSING_FIELD)
            .and_then(|n| d.id(n));
        let contractor = d.optional_text(m.get("contractor"));
        let sections = m
            .required(d, "sections", codes::MISSING_FIELD)
            .and_then(|n| d.list(n, "sections", true, |d, n| d.id(n)));
        let valid_from = m
            .required(d, "valid_from", codes::MISSING_FIELD)
            .and_then(|n| d.time(n));
        let valid_until = m
            .required(d, "valid_until", codes::MISSING_FIELD)
            .and_then(|n| d.time(n));
        m.finish(
            d,
            &["id", "contractor", "sections", "valid_from", "valid_until"],
        );
        Some(Contract {
            id: id?,
            contractor,
            sections: sections?,
            valid_from: valid_from?,
            valid_until: valid_until?,
        })
    })
}

/// `grants/**/*.yaml`
pub fn grants(d: &mut Decoder, root: &Node) -> Vec<Grant> {
    entries(d, root, "grants", |d, node| {
        let mut m = d.map(node, "a grant")?;
        let id = m
            .required(d, "id", codes::MISSING_FIELD)
            .and_then(|n| d.id(n));
        let subjects = m
            .required(d, "subjects", codes::MISSING_FIELD)
            .and_then(|n| grant_subjects(d, n));
        let assets_node = m.required(d, "assets", codes::MISSING_FIELD);
        let assets = assets_node.and_then(|n| asset_selection(d, n));
        let actions = m
            .required(d, "actions", codes::MISSING_FIELD)
            .and_then(|n| d.list(n, "actions", true, |d, n| d.action(n)));
        let purposes_node = m.get("purposes");
        let purposes = match purposes_node {
            Some(n) => d
                .list(n, "purposes", true, |d, n| d.text(n))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let valid_from = m
            .required(d, "valid_from", codes::MISSING_FIELD)
            .and_then(|n| d.time(n));
        let valid_until = m
            .required(d, "valid_until", codes::MISSING_FIELD)
            .and_then(|n| d.time(n));
        let approved_by = m
            .required(d, "approved_by", codes::MISSING_FIELD)
            .and_then(|n| d.text(n));
        let note = d.optional_text(m.get("note"));
        m.finish(
            d,
            &[
                "id",
                "subjects",
                "assets",
                "actions",
                "purposes",
                "valid_from",
                "valid_until",
                "approved_by",
                "note",
            ],
        );
        Some(Grant {
            id: id?,
            subjects: subjects?,
            assets: assets?,
            assets_span: assets_node.map_or(node.span, |n| n.span),
            actions: actions?,
            purposes,
            purposes_span: purposes_node.map(|n| n.span),
            valid_from: valid_from?,
            valid_until: valid_until?,
            approved_by: approved_by?,
            note,
            span: node.span,
        })
    })
}

fn grant_subjects(d: &mut Decoder, node: &Node) -> Option<GrantSubjects> {
    let mut m = d.map(node, "grant subjects: users, sections, contracts")?;
    let mut s = GrantSubjects {
        span: node.span,
        ..GrantSubjects::default()
    };
    if let Some(n) = m.get("users") {
        s.users = d.list(n, "users", true, |d, n| d.text(n))?;
    }
    if let Some(n) = m.get("sections") {
        s.sections = d.list(n, "sections", true, |d, n| d.id(n))?;
    }
    if let Some(n) = m.get("contracts") {
        s.contracts = d.list(n, "contracts", true, |d, n| d.id(n))?;
    }
    m.finish(d, &["users", "sections", "contracts"]);
    if s.users.is_empty() && s.sections.is_empty() && s.contracts.is_empty() {
        d.diags.push(
            Diagnostic::error(
                codes::EMPTY_LIST,
                node.span,
                "a grant must name at least one subject",
            )
            .hint("add `users: [...]`, `sections: [...]` or `contracts: [...]`"),
        );
        return None;
    }
    Some(s)
}

fn asset_selection(d: &mut Decoder, node: &Node) -> Option<AssetSelection> {
    match &node.kind {
        NodeKind::Seq(_) => d
            .list(node, "assets", true, |d, n| d.id(n))
            .map(AssetSelection::List),
        NodeKind::Map(_) => {
            let mut m = d.map(node, "an asset selector")?;
            let sel = m.required(d, "select", codes::MISSING_FIELD)?;
            m.finish(d, &["select"]);
            let mut s = d.map(sel, "selector: owner, max_confidentiality")?;
            let owner = s.get("owner").and_then(|n| d.id(n));
            let max_confidentiality = s.get("max_confidentiality").and_then(|n| d.level(n));
            s.finish(d, &["owner", "max_confidentiality"]);
            Some(AssetSelection::Select {
                owner,
                max_confidentiality,
                span: sel.span,
            })
        }
        NodeKind::Scalar(_) => {
            d.wrong_type(node, "a list of asset ids or `select: {...}`");
            None
        }
    }
}

/// `tests/**/*.yaml`
pub fn tests(d: &mut Decoder, root: &Node) -> Vec<TestCase> {
    entries(d, root, "tests", |d, node| {
        let mut m = d.map(node, "a test")?;
        let name = m.get("name").and_then(|n| d.string(n)).map(|s| s.value);
        let at = m.get("at").and_then(|n| d.time(n)).map(|t| t.value);
        let state = match m.get("state") {
            Some(n) => Some(runtime_state(d, n)?),
            None => None,
        };
        let system = m
            .required(d, "system", codes::MISSING_FIELD)
            .and_then(|n| d.string(n));
        let subject = m
            .required(d, "subject", codes::MISSING_FIELD)
            .and_then(|n| test_subject(d, n));
        let asset = m
            .required(d, "asset", codes::MISSING_FIELD)
            .and_then(|n| d.string(n));
        let action = m
            .required(d, "action", codes::MISSING_FIELD)
            .and_then(|n| d.action(n));
        let env = match m.get("env") {
            Some(n) => test_env(d, n)?,
            None => TestEnv::default(),
        };
        let expect = m.required(d, "expect", codes::MISSING_FIELD).and_then(|n| {
            d.word(n, "expectation", &["allow", "deny"], |s| match s {
                "allow" => Some(true),
                "deny" => Some(false),
                _ => None,
            })
        });
        let reason = m.get("reason").and_then(|n| d.string(n));
        let rule = m.get("rule").and_then(|n| d.string(n));
        let obligations = m.get("obligations").and_then(|n| {
            let list = d.list(n, "obligations", false, |d, n| d.string(n).map(|s| s.value))?;
            Some(Spanned::new(list, n.span))
        });
        m.finish(
            d,
            &[
                "name",
                "at",
                "state",
                "system",
                "subject",
                "asset",
                "action",
                "env",
                "expect",
                "reason",
                "rule",
                "obligations",
            ],
        );
        Some(TestCase {
            name: name.unwrap_or_else(|| String::from("(unnamed)")),
            at,
            state: state.unwrap_or_default(),
            system: system?,
            subject: subject?,
            asset: asset?,
            action: action?,
            env,
            expect_allow: expect?,
            reason,
            rule,
            obligations,
            span: node.span,
        })
    })
}

fn test_subject(d: &mut Decoder, node: &Node) -> Option<TestSubject> {
    let mut m = d.map(node, "a test subject")?;
    let sub = m
        .required(d, "sub", codes::MISSING_FIELD)
        .and_then(|n| d.text(n));
    let section = m.get("section").and_then(|n| d.string(n)).map(|s| s.value);
    let kind = m.get("kind").and_then(|n| d.string(n)).map(|s| s.value);
    let contract = m.get("contract").and_then(|n| d.string(n)).map(|s| s.value);
    let amr = m
        .get("amr")
        .and_then(|n| d.list(n, "amr", false, |d, n| d.string(n).map(|s| s.value)))
        .unwrap_or_default();
    let roles = m
        .get("roles")
        .and_then(|n| d.list(n, "roles", false, |d, n| d.string(n).map(|s| s.value)))
        .unwrap_or_default();
    m.finish(d, &["sub", "section", "kind", "contract", "amr", "roles"]);
    Some(TestSubject {
        sub: sub?.value,
        section,
        kind,
        contract,
        amr,
        roles,
    })
}

fn test_env(d: &mut Decoder, node: &Node) -> Option<TestEnv> {
    let mut m = d.map(node, "a test environment")?;
    let device_issued = m
        .get("device_issued")
        .and_then(|n| d.bool(n))
        .is_some_and(|b| b.value);
    let purpose = d.optional_text(m.get("purpose"));
    let break_glass_reason = d.optional_text(m.get("break_glass_reason"));
    m.finish(d, &["device_issued", "purpose", "break_glass_reason"]);
    Some(TestEnv {
        device_issued,
        purpose,
        break_glass_reason,
    })
}

/// Runtime state: `emergencies` and `lockdowns`, as in a test's `state:`.
pub fn runtime_state(d: &mut Decoder, node: &Node) -> Option<RuntimeState> {
    let mut m = d.map(node, "runtime state: emergencies, lockdowns")?;
    let emergencies = match m.get("emergencies") {
        Some(n) => d.list(n, "emergencies", false, emergency)?,
        None => Vec::new(),
    };
    let lockdowns = match m.get("lockdowns") {
        Some(n) => d.list(n, "lockdowns", false, lockdown)?,
        None => Vec::new(),
    };
    m.finish(d, &["emergencies", "lockdowns"]);
    Some(RuntimeState {
        emergencies,
        lockdowns,
    })
}

fn emergency(d: &mut Decoder, node: &Node) -> Option<Emergency> {
    let mut m = d.map(node, "an emergency")?;
    let id = m
        .required(d, "id", codes::MISSING_FIELD)
        .and_then(|n| d.id(n));
    let scope = m.required(d, "scope", codes::MISSING_FIELD).and_then(|n| match &n.kind {
        NodeKind::Scalar(s) if s.text == "all" => Some(EmergencyScope::All),
        NodeKind::Map(_) => {
            let mut sm = d.map(n, "emergency scope")?;
            let sections = sm.get("sections").and_then(|n| d.list(n, "sections", true, |d, n| d.id(n)));
            let assets = sm.get("assets").and_then(|n| d.list(n, "assets", true, |d, n| d.id(n)));
            sm.finish(d, &["sections", "assets"]);
            match (sections, assets) {
                (Some(s), None) => Some(EmergencyScope::Sections(s)),
                (None, Some(a)) => Some(EmergencyScope::Assets(a)),
                _ => {
                    d.diags.push(
                        Diagnostic::error(codes::INVALID_VALUE, n.span, "an emergency scope is `all`, `{ sections: [...] }` or `{ assets: [...] }`")
                            .hint("name exactly one of `sections` or `assets`, or write `all`"),
                    );
                    None
                }
            }
        }
        _ => {
            d.wrong_type(n, "`all` or `{ sections: [...] }` or `{ assets: [...] }`");
            None
        }
    });
    let (mut users, mut sections) = (Some(Vec::new()), Some(Vec::new()));
    if let Some(r) = m.required(d, "responders", codes::MISSING_FIELD) {
        if let Some(mut rm) = d.map(r, "responders: users, sections") {
            if let Some(n) = rm.get("users") {
                users = d.list(n, "users", true, |d, n| d.text(n));
            }
            if let Some(n) = rm.get("sections") {
                sections = d.list(n, "sections", true, |d, n| d.id(n));
            }
            rm.finish(d, &["users", "sections"]);
            if matches!((&users, &sections), (Some(u), Some(s)) if u.is_empty() && s.is_empty()) {
                d.diags.push(
                    Diagnostic::error(codes::EMPTY_LIST, r.span, "an emergency needs responders")
                        .hint("add `users: [...]` and/or `sections: [...]`"),
                );
                users = None;
            }
        } else {
            users = None;
        }
    } else {
        users = None;
    }
    let reason = d.optional_text(m.get("reason"));
    let from = m
        .required(d, "from", codes::MISSING_FIELD)
        .and_then(|n| d.time(n));
    let until = m
        .required(d, "until", codes::MISSING_FIELD)
        .and_then(|n| d.time(n));
    m.finish(d, &["id", "scope", "responders", "reason", "from", "until"]);
    Some(Emergency {
        id: id?,
        scope: scope?,
        responder_users: users?,
        responder_sections: sections?,
        reason,
        from: from?,
        until: until?,
    })
}

fn lockdown(d: &mut Decoder, node: &Node) -> Option<Lockdown> {
    let mut m = d.map(node, "a lockdown")?;
    let id = m
        .required(d, "id", codes::MISSING_FIELD)
        .and_then(|n| d.id(n));
    let scope = m.required(d, "scope", codes::MISSING_FIELD).and_then(|n| {
        let mut sm = d.map(n, "lockdown scope: assets, sections, systems")?;
        let mut scope = LockdownScope::default();
        for (key, slot) in [
            ("assets", &mut scope.assets),
            ("sections", &mut scope.sections),
            ("systems", &mut scope.systems),
        ] {
            if let Some(v) = sm.get(key) {
                *slot = d.list(v, key, true, |d, n| d.id(n))?;
            }
        }
        sm.finish(d, &["assets", "sections", "systems"]);
        if scope.assets.is_empty() && scope.sections.is_empty() && scope.systems.is_empty() {
            d.diags.push(
                Diagnostic::error(
                    codes::EMPTY_LIST,
                    n.span,
                    "a lockdown must name what it blocks",
                )
                .hint("add `assets: [...]`, `sections: [...]` or `systems: [...]`"),
            );
            return None;
        }
        Some(scope)
    });
    let reason = d.optional_text(m.get("reason"));
    let exempt = match m.get("exempt") {
        Some(n) => d.list(n, "exempt", false, |d, n| d.text(n))?,
        None => Vec::new(),
    };
    let from = m
        .required(d, "from", codes::MISSING_FIELD)
        .and_then(|n| d.time(n));
    let until = m.get("until").and_then(|n| d.time(n));
    m.finish(d, &["id", "scope", "reason", "exempt", "from", "until"]);
    Some(Lockdown {
        id: id?,
        scope: scope?,
        reason,
        exempt,
        from: from?,
        until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_pattern() {
        for ok in ["shimin", "k-2026-014", "a.b_c", "0x"] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in ["", "Shimin", "-a", "a b", "市民", "a/b"] {
            assert!(!is_valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn typos_get_a_suggestion() {
        assert_eq!(
            closest("valid_unitl", &["valid_from", "valid_until"]),
            Some("valid_until")
        );
        assert_eq!(closest("zzzzzz", &["id", "owner"]), None);
    }
}
