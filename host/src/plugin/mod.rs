//! Tools for plugin authors, behind `outpost plugin …`: `new` scaffolds a Rust plugin
//! crate, `inspect` says what a `.wasm` file is and whether Outpost would load it.
//!
//! Not part of the request path: nothing here runs while serving.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::settings::ModuleLimits;
use crate::runtime::{Runtime, RuntimeError, import_allowed};

/// The WIT package modules implement; `outpost plugin new` vendors it.
const WIT: &str = include_str!("../../../wit/outpost.wit");
/// The plugin SDK's source; vendored next to the WIT file so a scaffolded crate builds
/// without this repository.
const SDK_LIB: &str = include_str!("../../../plugins-sdk/src/lib.rs");
const SDK_ALLOC: &str = include_str!("../../../plugins-sdk/src/alloc.rs");
const TEMPLATE_CARGO: &str = include_str!("template/Cargo.toml.in");
const TEMPLATE_SDK_CARGO: &str = include_str!("template/sdk.Cargo.toml.in");
const TEMPLATE_LIB: &str = include_str!("template/lib.rs.in");
const TEMPLATE_README: &str = include_str!("template/README.md.in");
/// The wit-bindgen release the SDK is written against.
const WIT_BINDGEN: &str = "0.61";

/// The world every module implements, as `outpost:auth/module@<version>`.
pub const WORLD: &str = "outpost:auth/module";

/// A plugin tool failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginToolError {
    /// The crate name cannot be used.
    #[error(
        "invalid plugin name '{0}': use lower-case letters, digits, '_' and '-', starting with a letter"
    )]
    BadName(String),
    /// The target directory exists and is not empty.
    #[error("{} already exists and is not empty; choose another name or --dir", .0.display())]
    Exists(PathBuf),
    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The runtime refused or could not read the component.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PluginToolError + '_ {
    move |source| PluginToolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The version of the WIT package this Outpost implements (`0.1.0`).
pub fn wit_version() -> &'static str {
    WIT.lines()
        .find_map(|l| l.trim().strip_prefix("package outpost:auth@"))
        .map(|v| v.trim_end_matches(';'))
        .unwrap_or("unknown")
}

fn render(template: &str, name: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{lib}}", &name.replace('-', "_"))
        .replace("{{outpost_version}}", env!("CARGO_PKG_VERSION"))
        .replace("{{wit_version}}", wit_version())
        .replace("{{wit_bindgen}}", WIT_BINDGEN)
}

/// Create `<parent>/<name>/`: a Rust plugin crate with the SDK and WIT vendored, a
/// working example scheme and a unit test. Returns the directory and the files written.
pub fn scaffold(parent: &Path, name: &str) -> Result<(PathBuf, Vec<PathBuf>), PluginToolError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid {
        return Err(PluginToolError::BadName(name.to_string()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        let empty = std::fs::read_dir(&dir).map_err(io(&dir))?.next().is_none();
        if !empty {
            return Err(PluginToolError::Exists(dir));
        }
    }
    let files: [(&str, String); 8] = [
        ("Cargo.toml", render(TEMPLATE_CARGO, name)),
        ("src/lib.rs", render(TEMPLATE_LIB, name)),
        ("README.md", render(TEMPLATE_README, name)),
        (".gitignore", "/target\n".to_string()),
        ("wit/outpost.wit", WIT.to_string()),
        ("sdk/Cargo.toml", render(TEMPLATE_SDK_CARGO, name)),
        ("sdk/src/lib.rs", SDK_LIB.to_string()),
        ("sdk/src/alloc.rs", SDK_ALLOC.to_string()),
    ];
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).map_err(io(p))?;
        }
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(path);
    }
    Ok((dir, written))
}

/// What an import gives the module, for `inspect`.
fn capability(import: &str) -> &'static str {
    let iface = import.split('@').next().unwrap_or(import);
    match iface {
        "outpost:auth/types" => "shared types",
        "outpost:auth/secrets" => "secrets its provider's config declares (*_env keys)",
        "outpost:auth/kv" => "key-value state under the keys its config names",
        "outpost:auth/http" => "outbound HTTP to the origins its config names",
        "outpost:auth/log" => "logging into Outpost's log",
        i if i.starts_with("wasi:random/") => "randomness",
        i if i.starts_with("wasi:clocks/") => "clocks",
        "wasi:cli/stderr" => "stderr (goes to Outpost's log, redacted)",
        "wasi:cli/stdout" => "stdout (discarded)",
        "wasi:cli/stdin" => "stdin (empty)",
        "wasi:cli/environment" => "environment (always empty)",
        "wasi:cli/exit" => "exit (ends the call)",
        i if i.starts_with("wasi:cli/terminal-") => "terminal info (none)",
        i if i.starts_with("wasi:io/") => "streams (for stdio)",
        _ if import_allowed(import) => "provided",
        _ => "NOT PROVIDED: Outpost refuses this import",
    }
}

/// The report `outpost plugin inspect` prints, and whether Outpost would load the file.
pub fn inspect(path: &Path, limits: &ModuleLimits) -> Result<(String, bool), PluginToolError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let runtime = Runtime::new(limits.clone(), None)?;
    let found = runtime.inspect(&name, &bytes)?;
    let version = found
        .imports
        .iter()
        .find_map(|i| i.strip_prefix("outpost:auth/"))
        .and_then(|i| i.split_once('@'))
        .map(|(_, v)| v.to_string());

    let mut out = String::new();
    let size = bytes.len();
    let _ = writeln!(out, "file:     {}", path.display());
    let human = if size >= 1024 * 1024 {
        format!("{:.1} MiB", size as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.1} KiB", size as f64 / 1024.0)
    };
    let _ = writeln!(out, "size:     {size} bytes ({human})");
    let _ = writeln!(out, "sha256:   {}", hex::encode(Sha256::digest(&bytes)));
    let _ = writeln!(
        out,
        "world:    {}",
        match (&version, &found.verdict) {
            (Some(v), Ok(())) => format!("{WORLD}@{v}"),
            (Some(v), Err(_)) => format!("{WORLD}@{v} (claimed; see verdict)"),
            (None, _) => "none: imports nothing from outpost:auth".to_string(),
        }
    );
    let _ = writeln!(out, "exports:  {}", found.exports.join(", "));
    let _ = writeln!(
        out,
        "reuse:    {}",
        if found.stateless {
            "declares itself stateless: one instance may serve many requests (OUTPOST_PLUGIN_REUSE)"
        } else {
            "fresh instance per request"
        }
    );
    let _ = writeln!(out, "imports:");
    let width = found.imports.iter().map(String::len).max().unwrap_or(0);
    for i in &found.imports {
        let _ = writeln!(out, "  {i:width$}  {}", capability(i));
    }
    let ok = found.verdict.is_ok() && version.is_some();
    let _ = match (&found.verdict, &version) {
        (Ok(()), Some(v)) => writeln!(
            out,
            "verdict:  OK: implements {WORLD}@{v}; this Outpost implements {} and can load it",
            wit_version()
        ),
        (Err(e), _) => writeln!(out, "verdict:  REFUSED: {e}"),
        (Ok(()), None) => writeln!(
            out,
            "verdict:  REFUSED: does not implement the {WORLD} world (exports {})",
            if found.exports.is_empty() {
                "nothing".to_string()
            } else {
                found.exports.join(", ")
            }
        ),
    };
    Ok((out, ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_version_is_read_from_the_package_line() {
        assert_eq!(wit_version(), "0.1.0");
    }

    #[test]
    fn scaffold_refuses_bad_names_and_non_empty_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["", "Upper", "1abc", "a b", "../x", "a/b"] {
            assert!(
                matches!(scaffold(tmp.path(), bad), Err(PluginToolError::BadName(_))),
                "{bad}"
            );
        }
        let (dir, files) = scaffold(tmp.path(), "my-scheme").unwrap();
        assert_eq!(files.len(), 8);
        // Every file of the SDK is vendored, or the scaffolded crate does not build.
        let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins-sdk/src");
        for f in std::fs::read_dir(sdk).unwrap() {
            let name = f.unwrap().file_name();
            assert!(dir.join("sdk/src").join(&name).is_file(), "{name:?}");
        }
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"my-scheme\""));
        assert!(cargo.contains("name = \"my_scheme\""));
        assert!(!cargo.contains("{{"), "{cargo}");
        assert!(matches!(
            scaffold(tmp.path(), "my-scheme"),
            Err(PluginToolError::Exists(_))
        ));
    }

    #[test]
    fn capabilities_flag_what_is_refused() {
        assert!(capability("wasi:filesystem/types@0.2.0").starts_with("NOT PROVIDED"));
        assert!(capability("wasi:sockets/tcp@0.2.0").starts_with("NOT PROVIDED"));
        assert_eq!(
            capability("outpost:auth/kv@0.1.0"),
            "key-value state under the keys its config names"
        );
    }
}
