//! Configuration errors: always name the file (or variable), the key and the reason.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem found while loading configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `environment`) the problem is in.
    pub file: PathBuf,
    /// Dotted key path inside the file (`forwarding.deny[2]`), or `.` for the whole file.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// A problem at `key` in `file`.
    pub fn new(file: impl AsRef<Path>, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            file: file.as_ref().to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() || self.key == "." {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(
            did_you_mean("denny", ["mode", "allow", "deny"]),
            Some("deny")
        );
        assert_eq!(
            did_you_mean("base_ulr", ["name", "base_url"]),
            Some("base_url")
        );
        assert_eq!(did_you_mean("zzzzzz", ["mode", "deny"]), None);
    }

    #[test]
    fn display_names_file_and_key() {
        let e = ConfigError::new("p/github.yaml", "forwarding.deny", "bad");
        assert_eq!(e.to_string(), "p/github.yaml: forwarding.deny: bad");
    }
}
