//! Policy bundle → typed, validated model. Pure and synchronous: no Casbin, no network,
//! no async runtime. `engine` compiles what this module accepts.

pub mod decode;
pub mod diag;
pub mod index;
pub mod load;
pub mod model;
pub mod source;
pub mod validate;
pub mod yaml;

use crate::time::Instant;
use diag::Diagnostics;
use model::Bundle;
use std::path::Path;

/// A bundle with all its diagnostics, sorted. Usable for decisions only without errors.
#[derive(Debug)]
pub struct Loaded {
    pub bundle: Bundle,
    pub diagnostics: Diagnostics,
}

impl Loaded {
    pub fn is_valid(&self) -> bool {
        !self.diagnostics.has_errors()
    }
}

/// Reads, decodes and validates the bundle in `dir`; `at` is the time for warnings.
pub fn load(dir: &Path, at: Instant) -> Loaded {
    let (bundle, mut diagnostics) = load::load_dir(dir);
    if bundle.organization.is_some() || !bundle.assets.is_empty() {
        diagnostics.extend(validate::validate(&bundle, at));
    }
    diagnostics.finish(&bundle.sources);
    Loaded {
        bundle,
        diagnostics,
    }
}
