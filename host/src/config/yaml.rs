//! Parse YAML into typed structs with errors that name the key path and, for unknown
//! keys, suggest the key that was probably meant.

use std::fmt::Write as _;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use super::error::{ConfigError, did_you_mean};

/// Parse `text` (read from `file`) into `T`.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let segments: Vec<Segment> = e.path().iter().cloned().collect();
        let inner = e.into_inner();
        let line = inner
            .location()
            .map(|l| format!(" (line {})", l.line()))
            .unwrap_or_default();
        let raw = inner.to_string();
        // serde_yaml_ng prefixes messages with the path and suffixes the location; keep
        // only the reason, we print both ourselves.
        let reason = strip_location(strip_path_prefix(&raw));
        let (path, reason) = match explain_unknown_field(reason) {
            // The path ends with the unknown key itself; name the map that holds it.
            Some(r) => (key_path(&segments[..segments.len().saturating_sub(1)]), r),
            None => (key_path(&segments), reason.to_string()),
        };
        ConfigError::new(file, path, format!("{reason}{line}"))
    })
}

/// `forwarding.allow[2]`, or `.` for the whole file. Built from the segments rather than
/// by cutting serde_path_to_error's rendering at a `.` (a key may contain dots: the map
/// holding the unknown key `h.sts` is the file, not `h`), and cut before the first place
/// it could not name (it writes `?` there, e.g. for a syntax error): both found by
/// fuzzing (fuzz/README.md).
fn key_path(segments: &[Segment]) -> String {
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => {
                let _ = write!(out, "[{index}]");
            }
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => break,
        }
    }
    if out.is_empty() { ".".to_string() } else { out }
}

/// serde_yaml_ng prefixes messages with its own rendering of the path
/// (`hosts[0]: unknown field …`); we print the path ourselves.
fn strip_path_prefix(msg: &str) -> &str {
    match msg.split_once(": ") {
        Some((head, rest)) if !head.is_empty() && !head.contains(' ') => rest,
        _ => msg,
    }
}

fn strip_location(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

/// Turn serde's "unknown field `denny`, expected one of `mode`, `deny`" into
/// "unknown key 'denny' (did you mean 'deny'?); expected one of: mode, deny".
fn explain_unknown_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let hint = did_you_mean(field, expected.iter().copied())
        .map(|k| format!(" (did you mean '{k}'?)"))
        .unwrap_or_default();
    Some(format!(
        "unknown key '{field}'{hint}; expected one of: {}",
        expected.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        deny: Vec<String>,
        mode: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        forwarding: Inner,
    }

    #[test]
    fn unknown_nested_key_names_path_and_suggests() {
        let err = parse::<Outer>(Path::new("x.yaml"), "name: a\nforwarding:\n  denny: []\n")
            .expect_err("typo must fail");
        assert_eq!(err.key, "forwarding");
        assert!(
            err.reason
                .contains("unknown key 'denny' (did you mean 'deny'?)"),
            "{}",
            err.reason
        );
        assert!(err.reason.contains("line 3"), "{}", err.reason);
    }

    #[test]
    fn error_keys_are_places_in_the_file() {
        // An unknown key with a dot in it is held by the file itself, not by a key `h`.
        let err = parse::<Outer>(Path::new("x.yaml"), "h.sts: 1\n").expect_err("unknown key");
        assert_eq!(err.key, ".");
        assert!(err.reason.contains("unknown key 'h.sts'"), "{}", err.reason);
        // A syntax error where no key could be read names the nearest known place.
        let err = parse::<Outer>(Path::new("x.yaml"), ":").expect_err("syntax error");
        assert_eq!(err.key, ".", "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse::<Outer>(Path::new("x.yaml"), "name: a\nforwarding:\n  deny: 5\n")
            .expect_err("type error must fail");
        assert_eq!(err.key, "forwarding.deny");
    }
}
