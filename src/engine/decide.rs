//! A decision (SPEC §6): the request, the reasons in order, obligations, messages.
//!
//! The explainer here walks the ordered rules over [`Facts`] to name the reason, the rule
//! and the obligations; Casbin decides allow or deny over the policy rows. The snapshot
//! allows only when both agree (`Snapshot::decide`).

use super::facts::{Facts, Name, Principals};
use crate::policy::model::{Action, Tier};
use crate::policy::source::Location;
use serde::Serialize;
use std::sync::Arc;

/// Staff (職員) or contractor (委託事業者).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    Staff,
    Contractor,
}

impl SubjectKind {
    /// `staff` (also when absent) or `contractor`; anything else invalidates the token.
    pub fn parse(claim: Option<&str>) -> Option<Self> {
        match claim {
            None | Some("staff") => Some(SubjectKind::Staff),
            Some("contractor") => Some(SubjectKind::Contractor),
            Some(_) => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Staff => "staff",
            SubjectKind::Contractor => "contractor",
        }
    }
}

/// The person a request is about, from a verified token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Subject {
    pub sub: String,
    pub section: Option<String>,
    pub kind: SubjectKind,
    /// Only for contractors; a staff subject's contract claim is dropped.
    pub contract: Option<String>,
    pub mfa: bool,
}

impl Subject {
    /// MFA holds when `amr` contains `mfa` or at least two distinct methods (RFC 8176).
    pub fn mfa_from_amr(amr: &[String]) -> bool {
        if amr.iter().any(|m| m == "mfa") {
            return true;
        }
        let mut distinct: Vec<&str> = amr
            .iter()
            .map(String::as_str)
            .filter(|m| !m.trim().is_empty())
            .collect();
        distinct.sort_unstable();
        distinct.dedup();
        distinct.len() >= 2
    }

    pub fn new(
        sub: &str,
        section: Option<&str>,
        kind: SubjectKind,
        contract: Option<&str>,
        amr: &[String],
    ) -> Self {
        Subject {
            sub: sub.to_string(),
            section: present(section).map(str::to_string),
            kind,
            contract: match kind {
                SubjectKind::Contractor => present(contract).map(str::to_string),
                SubjectKind::Staff => None,
            },
            mfa: Subject::mfa_from_amr(amr),
        }
    }
}

/// A string that is empty or only white space counts as absent.
pub fn present(s: Option<&str>) -> Option<&str> {
    s.filter(|v| !v.trim().is_empty())
}

/// The environment of a request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Env {
    pub device_issued: bool,
    pub purpose: Option<String>,
    pub break_glass_reason: Option<String>,
}

impl Env {
    pub fn purpose(&self) -> Option<&str> {
        present(self.purpose.as_deref())
    }
    pub fn break_glass(&self) -> bool {
        present(self.break_glass_reason.as_deref()).is_some()
    }
}

/// What is asked: may `subject`, through `system`, do `action` on `asset`?
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Request {
    pub system: String,
    pub subject: Subject,
    pub asset: String,
    pub action: Action,
    pub env: Env,
}

impl Request {
    /// The request a decision test describes; `Err` when its subject could not hold a
    /// valid token (an unknown `kind`).
    pub fn from_test_case(t: &crate::policy::model::TestCase) -> Result<Request, String> {
        let s = &t.subject;
        let kind = SubjectKind::parse(s.kind.as_deref()).ok_or_else(|| {
            format!(
                "subject kind `{}` makes the token invalid",
                s.kind.as_deref().unwrap_or("")
            )
        })?;
        Ok(Request {
            system: t.system.value.clone(),
            subject: Subject::new(
                &s.sub,
                s.section.as_deref(),
                kind,
                s.contract.as_deref(),
                &s.amr,
            ),
            asset: t.asset.value.clone(),
            action: t.action.value,
            env: Env {
                device_issued: t.env.device_issued,
                purpose: t.env.purpose.clone(),
                break_glass_reason: t.env.break_glass_reason.clone(),
            },
        })
    }
}

/// The reason of a decision. The order of the variants is the order of the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    UnknownAsset,
    SystemNotHolder,
    Lockdown,
    ContractInactive,
    UnissuedDevice,
    MfaRequired,
    PurposeRequired,
    OutputForbidden,
    Public,
    OwnerSection,
    Grant,
    BreakGlass,
    NoPermission,
    /// Fail-closed: the two evaluators disagreed or the engine failed. Never expected;
    /// always a deny, logged as an error.
    InternalError,
}

impl Reason {
    pub const DENY_RULES: [Reason; 8] = [
        Reason::UnknownAsset,
        Reason::SystemNotHolder,
        Reason::Lockdown,
        Reason::ContractInactive,
        Reason::UnissuedDevice,
        Reason::MfaRequired,
        Reason::PurposeRequired,
        Reason::OutputForbidden,
    ];
    pub const ALLOW_RULES: [Reason; 4] = [
        Reason::Public,
        Reason::OwnerSection,
        Reason::Grant,
        Reason::BreakGlass,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownAsset => "unknown_asset",
            Reason::SystemNotHolder => "system_not_holder",
            Reason::Lockdown => "lockdown",
            Reason::ContractInactive => "contract_inactive",
            Reason::UnissuedDevice => "unissued_device",
            Reason::MfaRequired => "mfa_required",
            Reason::PurposeRequired => "purpose_required",
            Reason::OutputForbidden => "output_forbidden",
            Reason::Public => "public",
            Reason::OwnerSection => "owner_section",
            Reason::Grant => "grant",
            Reason::BreakGlass => "break_glass",
            Reason::NoPermission => "no_permission",
            Reason::InternalError => "internal_error",
        }
    }

    pub fn is_allow(self) -> bool {
        matches!(
            self,
            Reason::Public | Reason::OwnerSection | Reason::Grant | Reason::BreakGlass
        )
    }

    /// (日本語, English) explanation for the person at the keyboard.
    pub fn messages(self) -> (&'static str, &'static str) {
        match self {
            Reason::UnknownAsset => (
                "情報資産台帳に登録されていない情報資産です。",
                "The asset is not in the information-asset register.",
            ),
            Reason::SystemNotHolder => (
                "この情報システムはこの情報資産を取り扱うシステムとして登録されていません。",
                "This system is not registered as a holder of the asset.",
            ),
            Reason::Lockdown => (
                "インシデント対応のため、この情報資産へのアクセスは遮断されています。",
                "Access to this asset is blocked by an incident lockdown.",
            ),
            Reason::ContractInactive => (
                "委託契約が有効でないか、この情報資産の所管課を対象としていません。",
                "The contract is not in force or does not cover the asset's section.",
            ),
            Reason::UnissuedDevice => (
                "市が支給した端末以外からはこの情報資産を利用できません。",
                "This asset may be used only from a city-issued device.",
            ),
            Reason::MfaRequired => (
                "特定個人情報の利用には多要素認証が必要です。",
                "Multi-factor authentication is required for My Number data.",
            ),
            Reason::PurposeRequired => (
                "特定個人情報の利用には事務の目的の指定が必要です。",
                "A purpose (the 事務 served) is required for My Number data.",
            ),
            Reason::OutputForbidden => (
                "この情報資産のこの出力は禁止されています。",
                "This output of the asset is forbidden.",
            ),
            Reason::Public => (
                "公開情報（機密性1）です。",
                "Public information (confidentiality 1).",
            ),
            Reason::OwnerSection => (
                "所管課の職員として許可されています。",
                "Allowed as staff of the owning section.",
            ),
            Reason::Grant => (
                "承認された権限付与により許可されています。",
                "Allowed by an approved grant.",
            ),
            Reason::BreakGlass => (
                "緊急事態における緊急アクセスとして許可されています。事後確認の対象です。",
                "Allowed as break-glass access in a declared emergency; subject to review.",
            ),
            Reason::NoPermission => (
                "この操作の権限がありません。",
                "No permission for this action.",
            ),
            Reason::InternalError => (
                "判定できなかったため、安全のため拒否しました。",
                "The decision could not be made; denied for safety.",
            ),
        }
    }
}

/// An obligation the business system must carry out, or refuse access.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Obligation {
    Encrypt,
    Label { text: Name },
    Watermark,
    Backup,
    PostReview,
}

impl Obligation {
    pub fn name(&self) -> &'static str {
        match self {
            Obligation::Encrypt => "encrypt",
            Obligation::Label { .. } => "label",
            Obligation::Watermark => "watermark",
            Obligation::Backup => "backup",
            Obligation::PostReview => "post_review",
        }
    }
}

/// The rule that decided: a grant, a lockdown or an emergency, with its source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub kind: &'static str,
    pub id: Arc<str>,
    pub source: Option<Location>,
}

/// The asset's levels at decision time (for the record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AssetLevels {
    pub confidentiality: Name,
    pub integrity: Name,
    pub availability: Name,
    pub tier: Tier,
    pub my_number: bool,
    pub owner: Name,
}

/// The whole answer to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allow: bool,
    pub reason: Reason,
    pub message_ja: &'static str,
    pub message_en: &'static str,
    pub rule: Option<RuleRef>,
    pub obligations: Vec<Obligation>,
    pub label: Option<Name>,
    pub asset: Option<AssetLevels>,
    pub policy_version: Arc<str>,
}

/// One rule considered, for `policy explain`.
#[derive(Clone, Debug, Serialize)]
pub struct TraceStep {
    pub reason: Reason,
    pub applies: bool,
}

/// The explainer's verdict: the reason and the rule.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub reason: Reason,
    pub rule: Option<RuleRef>,
}

/// Walks the rules of SPEC §6 in order. With `trace`, records every rule considered.
pub fn explain(facts: &Facts, req: &Request, mut trace: Option<&mut Vec<TraceStep>>) -> Verdict {
    let mut step = |reason: Reason, applies: bool| {
        if let Some(t) = trace.as_deref_mut() {
            t.push(TraceStep { reason, applies });
        }
        applies
    };
    let plain = |reason| Verdict { reason, rule: None };

    let Some((ai, asset)) = facts.asset(&req.asset) else {
        step(Reason::UnknownAsset, true);
        return plain(Reason::UnknownAsset);
    };
    step(Reason::UnknownAsset, false);
    if step(
        Reason::SystemNotHolder,
        !asset.holders.contains(&req.system),
    ) {
        return plain(Reason::SystemNotHolder);
    }
    let s = &req.subject;
    let lockdown = facts
        .lockdowns
        .iter()
        .find(|l| l.covers(ai, &req.system) && !l.exempt.contains(&s.sub));
    if step(Reason::Lockdown, lockdown.is_some()) {
        return Verdict {
            reason: Reason::Lockdown,
            rule: lockdown.map(|l| RuleRef {
                kind: "lockdown",
                id: l.source.id.clone(),
                source: l.source.location.clone(),
            }),
        };
    }
    let contract_ok = s.kind == SubjectKind::Staff
        || s.contract
            .as_deref()
            .and_then(|c| facts.contracts.get(c))
            .is_some_and(|sections| sections.contains(&asset.owner));
    if step(Reason::ContractInactive, !contract_ok) {
        return plain(Reason::ContractInactive);
    }
    if step(
        Reason::UnissuedDevice,
        !req.env.device_issued && asset.tier != Tier::Public,
    ) {
        return plain(Reason::UnissuedDevice);
    }
    if step(Reason::MfaRequired, asset.my_number && !s.mfa) {
        return plain(Reason::MfaRequired);
    }
    let purpose = req.env.purpose();
    if step(
        Reason::PurposeRequired,
        asset.my_number && purpose.is_none(),
    ) {
        return plain(Reason::PurposeRequired);
    }
    let act = req.action;
    let forbidden = (asset.my_number && act.leaves_my_number_system())
        || (s.kind == SubjectKind::Contractor && asset.tier == Tier::Secret && act.is_output());
    if step(Reason::OutputForbidden, forbidden) {
        return plain(Reason::OutputForbidden);
    }

    if step(
        Reason::Public,
        asset.tier == Tier::Public && (act == Action::Read || act.is_output()),
    ) {
        return plain(Reason::Public);
    }
    let owner = s.kind == SubjectKind::Staff
        && s.section.as_deref() == Some(asset.owner.as_str())
        && !asset.my_number
        && asset.tier != Tier::Secret
        && (matches!(act, Action::Read | Action::Print | Action::Copy)
            || (matches!(act, Action::Create | Action::Update) && !asset.integrity_2));
    if step(Reason::OwnerSection, owner) {
        return plain(Reason::OwnerSection);
    }
    let principals = Principals {
        user: &s.sub,
        section: if s.kind == SubjectKind::Staff {
            s.section.as_deref()
        } else {
            None
        },
        contract: if s.kind == SubjectKind::Contractor {
            s.contract.as_deref()
        } else {
            None
        },
    };
    let grant = facts.first_grant(ai, &principals, act, purpose);
    if step(Reason::Grant, grant.is_some()) {
        return Verdict {
            reason: Reason::Grant,
            rule: grant
                .and_then(|g| facts.grant_sources.get(g as usize))
                .map(|g| RuleRef {
                    kind: "grant",
                    id: g.id.clone(),
                    source: g.location.clone(),
                }),
        };
    }
    let emergency = if req.env.break_glass()
        && asset.availability_2
        && s.kind == SubjectKind::Staff
        && act == Action::Read
    {
        facts.emergencies.iter().find(|e| {
            e.covers(ai)
                && (e.users.contains(&s.sub)
                    || s.section
                        .as_ref()
                        .is_some_and(|sec| e.sections.contains(sec)))
        })
    } else {
        None
    };
    if step(Reason::BreakGlass, emergency.is_some()) {
        return Verdict {
            reason: Reason::BreakGlass,
            rule: emergency.map(|e| RuleRef {
                kind: "emergency",
                id: e.source.id.clone(),
                source: e.source.location.clone(),
            }),
        };
    }
    plain(Reason::NoPermission)
}

/// Obligations of an allow (SPEC §6).
pub fn obligations(
    asset: &super::facts::AssetFacts,
    action: Action,
    reason: Reason,
) -> Vec<Obligation> {
    let mut out = Vec::new();
    let guarded = matches!(asset.tier, Tier::Internal | Tier::Secret);
    if guarded && matches!(action, Action::Export | Action::Transmit) {
        out.push(Obligation::Encrypt);
    }
    if guarded && action.is_output() {
        out.push(Obligation::Label {
            text: asset.label.clone(),
        });
    }
    if asset.tier == Tier::Secret && action == Action::Print {
        out.push(Obligation::Watermark);
    }
    if asset.integrity_2 && matches!(action, Action::Update | Action::Delete) {
        out.push(Obligation::Backup);
    }
    if reason == Reason::BreakGlass {
        out.push(Obligation::PostReview);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mfa_needs_mfa_or_two_distinct_methods() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(Subject::mfa_from_amr(&v(&["mfa"])));
        assert!(Subject::mfa_from_amr(&v(&["pwd", "fpt"])));
        assert!(!Subject::mfa_from_amr(&v(&["pwd", "pwd"])));
        assert!(!Subject::mfa_from_amr(&v(&["pwd"])));
        assert!(!Subject::mfa_from_amr(&v(&[])));
    }

    #[test]
    fn kind_is_staff_contractor_or_invalid() {
        assert_eq!(SubjectKind::parse(None), Some(SubjectKind::Staff));
        assert_eq!(
            SubjectKind::parse(Some("contractor")),
            Some(SubjectKind::Contractor)
        );
        assert_eq!(SubjectKind::parse(Some("admin")), None);
    }

    #[test]
    fn staff_contract_claim_is_ignored_and_blank_is_absent() {
        let s = Subject::new("e1", Some("  "), SubjectKind::Staff, Some("k-1"), &[]);
        assert_eq!(s.section, None);
        assert_eq!(s.contract, None);
        let c = Subject::new("x", None, SubjectKind::Contractor, Some("k-1"), &[]);
        assert_eq!(c.contract.as_deref(), Some("k-1"));
    }
}
