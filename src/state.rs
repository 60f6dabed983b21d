//! Durable runtime state: the emergencies and lockdowns declared through the admin API.
//!
//! Kept in `<data>/state.json`, written atomically (temporary file, fsync, rename, fsync of
//! the directory) so a crash leaves the old or the new state, never half of one.

use crate::policy::model::{
    Emergency, EmergencyScope, Lockdown, LockdownScope, RuntimeState, Spanned,
};
use crate::policy::source::Span;
use crate::time::Instant;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmergencyRec {
    pub id: String,
    pub all: bool,
    #[serde(default)]
    pub sections: Vec<String>,
    #[serde(default)]
    pub assets: Vec<String>,
    #[serde(default)]
    pub responder_users: Vec<String>,
    #[serde(default)]
    pub responder_sections: Vec<String>,
    pub reason: String,
    pub from: Instant,
    pub until: Instant,
    pub declared_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockdownRec {
    pub id: String,
    #[serde(default)]
    pub assets: Vec<String>,
    #[serde(default)]
    pub sections: Vec<String>,
    #[serde(default)]
    pub systems: Vec<String>,
    pub reason: String,
    #[serde(default)]
    pub exempt: Vec<String>,
    pub from: Instant,
    pub until: Option<Instant>,
    pub declared_by: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    #[serde(default)]
    pub emergencies: Vec<EmergencyRec>,
    #[serde(default)]
    pub lockdowns: Vec<LockdownRec>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the state file `{path}`: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the state file `{path}` is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("cannot write the state file `{path}`: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// State declared at runtime has no source file: its spans point nowhere.
fn s(v: &str) -> Spanned<String> {
    Spanned::new(v.to_string(), Span::NONE)
}

impl StateFile {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<StateFile, StateError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| StateError::Parse {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(StateFile::default()),
            Err(source) => Err(StateError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Writes atomically and durably.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |source| StateError::Write {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(text.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Drops what has ended before `now`.
    pub fn prune(&mut self, now: Instant) {
        self.emergencies.retain(|e| e.until > now);
        self.lockdowns.retain(|l| l.until.is_none_or(|u| u > now));
    }

    /// The state as the compiler reads it (declaration order kept).
    pub fn to_runtime(&self) -> RuntimeState {
        RuntimeState {
            emergencies: self
                .emergencies
                .iter()
                .map(|e| Emergency {
                    id: s(&e.id),
                    scope: if e.all {
                        EmergencyScope::All
                    } else if !e.sections.is_empty() {
                        EmergencyScope::Sections(e.sections.iter().map(|x| s(x)).collect())
                    } else {
                        EmergencyScope::Assets(e.assets.iter().map(|x| s(x)).collect())
                    },
                    responder_users: e.responder_users.iter().map(|x| s(x)).collect(),
                    responder_sections: e.responder_sections.iter().map(|x| s(x)).collect(),
                    reason: Some(e.reason.clone()),
                    from: Spanned::new(e.from, Span::NONE),
                    until: Spanned::new(e.until, Span::NONE),
                })
                .collect(),
            lockdowns: self
                .lockdowns
                .iter()
                .map(|l| Lockdown {
                    id: s(&l.id),
                    scope: LockdownScope {
                        assets: l.assets.iter().map(|x| s(x)).collect(),
                        sections: l.sections.iter().map(|x| s(x)).collect(),
                        systems: l.systems.iter().map(|x| s(x)).collect(),
                    },
                    reason: Some(l.reason.clone()),
                    exempt: l.exempt.iter().map(|x| s(x)).collect(),
                    from: Spanned::new(l.from, Span::NONE),
                    until: l.until.map(|u| Spanned::new(u, Span::NONE)),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_atomically_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(StateFile::load(&path).unwrap(), StateFile::default());
        let now = chrono::Utc::now();
        let st = StateFile {
            emergencies: vec![],
            lockdowns: vec![LockdownRec {
                id: "ld-1".into(),
                assets: vec![],
                sections: vec!["shimin".into()],
                systems: vec![],
                reason: "不正アクセスの疑い".into(),
                exempt: vec!["e0001".into()],
                from: now,
                until: None,
                declared_by: "e0001".into(),
            }],
        };
        st.save(&path).unwrap();
        assert_eq!(StateFile::load(&path).unwrap(), st);
        assert!(!path.with_extension("json.tmp").exists());
        let rt = st.to_runtime();
        assert_eq!(rt.lockdowns[0].scope.sections[0].value, "shimin");
    }
}
