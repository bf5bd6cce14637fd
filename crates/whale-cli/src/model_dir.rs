//! Where to find a model folder when `--model` is not given: the bundled model that
//! ships beside the binary (in the repository's `models/`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// Folder name of the bundled model inside `models/`.
pub const BUNDLED_MODEL: &str = "whale-tiny";

/// `--model` if given, else the bundled model found next to the executable (installed
/// layout `bin/../models`, or the cargo layout `target/<profile>/../../models`) or under
/// the current directory.
pub fn resolve(model: Option<&Path>) -> Result<PathBuf> {
    if let Some(m) = model {
        return Ok(m.to_path_buf());
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(4) {
            candidates.push(up.join("models").join(BUNDLED_MODEL));
        }
    }
    candidates.push(PathBuf::from("models").join(BUNDLED_MODEL));
    match candidates.iter().find(|c| c.join("config.json").is_file()) {
        Some(found) => Ok(found.clone()),
        None => bail!(
            "no --model given and the bundled model models/{BUNDLED_MODEL} was not found beside the binary or in the current directory"
        ),
    }
}
