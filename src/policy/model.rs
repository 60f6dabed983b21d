//! The typed policy bundle: what the admins wrote, with the source span of every value a
//! diagnostic or a decision may need to point at.
//!
//! Values here are as written and individually well-formed (ids match their pattern,
//! dates parse, levels are strings); whether they fit together is checked in `validate`.

use super::source::{Sources, Span};
use crate::time::Instant;
use chrono::NaiveDate;

/// A value with the span it was written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

impl<T> Spanned<T> {
    pub fn new(value: T, span: Span) -> Self {
        Spanned { value, span }
    }
}

impl<T: std::fmt::Display> std::fmt::Display for Spanned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.value.fmt(f)
    }
}

/// Classification scheme chosen in `organization.yaml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// MIC guideline before 2024: confidentiality 1, 2, 3.
    Classic,
    /// MIC guideline of October 2024: confidentiality 1, 2, 3C, 3B, 3A.
    Mic2024,
}

impl Scheme {
    pub const NAMES: [&'static str; 2] = ["classic", "mic-2024"];

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "classic" => Some(Scheme::Classic),
            "mic-2024" => Some(Scheme::Mic2024),
            _ => None,
        }
    }

    /// Confidentiality levels, low to high.
    pub fn confidentiality_levels(self) -> &'static [&'static str] {
        match self {
            Scheme::Classic => &["1", "2", "3"],
            Scheme::Mic2024 => &["1", "2", "3C", "3B", "3A"],
        }
    }

    /// Rank (0 = lowest) of a confidentiality level, if the scheme has it.
    pub fn confidentiality_rank(self, level: &str) -> Option<usize> {
        self.confidentiality_levels()
            .iter()
            .position(|l| *l == level)
    }

    pub const INTEGRITY_LEVELS: [&'static str; 2] = ["1", "2"];
    pub const AVAILABILITY_LEVELS: [&'static str; 2] = ["1", "2"];
}

/// The rule tier of a confidentiality level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Public,
    Internal,
    Secret,
}

impl Tier {
    /// `1` → public, `2` → internal, `3`, `3C`, `3B`, `3A` → secret.
    pub fn of_level(level: &str) -> Option<Tier> {
        match level {
            "1" => Some(Tier::Public),
            "2" => Some(Tier::Internal),
            "3" | "3C" | "3B" | "3A" => Some(Tier::Secret),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Public => "public",
            Tier::Internal => "internal",
            Tier::Secret => "secret",
        }
    }
}

/// Network zone (ネットワーク分離) of a system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Zone {
    MyNumber,
    Lgwan,
    Internet,
}

impl Zone {
    pub const NAMES: [&'static str; 3] = ["mynumber", "lgwan", "internet"];

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "mynumber" => Some(Zone::MyNumber),
            "lgwan" => Some(Zone::Lgwan),
            "internet" => Some(Zone::Internet),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Zone::MyNumber => "mynumber",
            Zone::Lgwan => "lgwan",
            Zone::Internet => "internet",
        }
    }
}

/// What a subject may do to an asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Create,
    Update,
    Delete,
    Print,
    Copy,
    Export,
    Transmit,
}

impl Action {
    pub const ALL: [Action; 8] = [
        Action::Read,
        Action::Create,
        Action::Update,
        Action::Delete,
        Action::Print,
        Action::Copy,
        Action::Export,
        Action::Transmit,
    ];
    pub const NAMES: [&'static str; 8] = [
        "read", "create", "update", "delete", "print", "copy", "export", "transmit",
    ];

    pub fn parse(text: &str) -> Option<Self> {
        let i = Self::NAMES.iter().position(|n| *n == text)?;
        Self::ALL.get(i).copied()
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Bit of this action in an action set.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// `print`, `copy`, `export`, `transmit`.
    pub fn is_output(self) -> bool {
        matches!(
            self,
            Action::Print | Action::Copy | Action::Export | Action::Transmit
        )
    }

    /// `create`, `update`, `delete`.
    pub fn is_modify(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Delete)
    }

    /// Output actions a hard rule forbids on `my_number` assets.
    pub fn leaves_my_number_system(self) -> bool {
        matches!(self, Action::Copy | Action::Export | Action::Transmit)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
pub struct Organization {
    pub scheme: Spanned<Scheme>,
    pub city: Option<String>,
    /// Missing only in a bundle with errors (`policy::organization::no_ciso`).
    pub ciso: Option<Spanned<String>>,
    pub departments: Vec<Department>,
}

#[derive(Debug)]
pub struct Department {
    pub id: Spanned<String>,
    pub name: Option<String>,
    pub sections: Vec<Section>,
}

#[derive(Debug, Clone)]
pub struct Section {
    pub id: Spanned<String>,
    pub name: Option<String>,
    pub chief: Spanned<String>,
    pub department: String,
}

#[derive(Debug, Clone)]
pub struct System {
    pub id: Spanned<String>,
    pub name: Option<String>,
    pub owner: Spanned<String>,
    pub zone: Spanned<Zone>,
    pub identity: Spanned<String>,
}

#[derive(Debug, Clone)]
pub struct Asset {
    pub id: Spanned<String>,
    pub name: Option<String>,
    pub owner: Spanned<String>,
    pub systems: Vec<Spanned<String>>,
    pub confidentiality: Spanned<String>,
    pub integrity: Spanned<String>,
    pub availability: Spanned<String>,
    pub personal_info: bool,
    pub my_number: Spanned<bool>,
    pub classified_by: Option<Spanned<String>>,
    pub classified_at: Option<Spanned<NaiveDate>>,
    pub review_by: Option<Spanned<NaiveDate>>,
    /// The span of the whole entry (its `id:` line is where it starts).
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Contract {
    pub id: Spanned<String>,
    pub contractor: Option<String>,
    pub sections: Vec<Spanned<String>>,
    pub valid_from: Spanned<Instant>,
    pub valid_until: Spanned<Instant>,
}

#[derive(Debug, Clone, Default)]
pub struct GrantSubjects {
    pub users: Vec<Spanned<String>>,
    pub sections: Vec<Spanned<String>>,
    pub contracts: Vec<Spanned<String>>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum AssetSelection {
    List(Vec<Spanned<String>>),
    Select {
        owner: Option<Spanned<String>>,
        max_confidentiality: Option<Spanned<String>>,
        span: Span,
    },
}

#[derive(Debug, Clone)]
pub struct Grant {
    pub id: Spanned<String>,
    pub subjects: GrantSubjects,
    pub assets: AssetSelection,
    pub assets_span: Span,
    pub actions: Vec<Spanned<Action>>,
    pub purposes: Vec<Spanned<String>>,
    pub purposes_span: Option<Span>,
    pub valid_from: Spanned<Instant>,
    pub valid_until: Spanned<Instant>,
    pub approved_by: Spanned<String>,
    pub note: Option<String>,
    pub span: Span,
}

/// The subject of a decision test, with the default claim names of SPEC §5.
#[derive(Debug, Clone, Default)]
pub struct TestSubject {
    pub sub: String,
    pub section: Option<String>,
    pub kind: Option<String>,
    pub contract: Option<String>,
    pub amr: Vec<String>,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct TestEnv {
    pub device_issued: bool,
    pub purpose: Option<String>,
    pub break_glass_reason: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TestCase {
    pub name: String,
    pub at: Option<Instant>,
    pub state: RuntimeState,
    pub system: Spanned<String>,
    pub subject: TestSubject,
    pub asset: Spanned<String>,
    pub action: Spanned<Action>,
    pub env: TestEnv,
    pub expect_allow: Spanned<bool>,
    pub reason: Option<Spanned<String>>,
    pub rule: Option<Spanned<String>>,
    pub obligations: Option<Spanned<Vec<String>>>,
    pub span: Span,
}

/// Runtime state a decision depends on: emergencies and lockdowns. Changed through the
/// admin API in the service; given as data in tests (`state:`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeState {
    pub emergencies: Vec<Emergency>,
    pub lockdowns: Vec<Lockdown>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmergencyScope {
    All,
    Sections(Vec<Spanned<String>>),
    Assets(Vec<Spanned<String>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emergency {
    pub id: Spanned<String>,
    pub scope: EmergencyScope,
    pub responder_users: Vec<Spanned<String>>,
    pub responder_sections: Vec<Spanned<String>>,
    pub reason: Option<String>,
    pub from: Spanned<Instant>,
    pub until: Spanned<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockdownScope {
    pub assets: Vec<Spanned<String>>,
    pub sections: Vec<Spanned<String>>,
    pub systems: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockdown {
    pub id: Spanned<String>,
    pub scope: LockdownScope,
    pub reason: Option<String>,
    pub exempt: Vec<Spanned<String>>,
    pub from: Spanned<Instant>,
    pub until: Option<Spanned<Instant>>,
}

/// A whole bundle as read. Lists keep bundle order: files by relative path, then
/// position in the file.
#[derive(Debug, Default)]
pub struct Bundle {
    pub sources: Sources,
    pub organization: Option<Organization>,
    pub systems: Vec<System>,
    pub assets: Vec<Asset>,
    pub contracts: Vec<Contract>,
    pub grants: Vec<Grant>,
    pub tests: Vec<TestCase>,
}

impl Bundle {
    pub fn scheme(&self) -> Scheme {
        self.organization
            .as_ref()
            .map_or(Scheme::Classic, |o| o.scheme.value)
    }

    pub fn sections(&self) -> impl Iterator<Item = &Section> {
        self.organization
            .iter()
            .flat_map(|o| o.departments.iter())
            .flat_map(|d| d.sections.iter())
    }
}
