//! Parse YAML into typed structs with errors that name the key path and, for unknown
//! keys, suggest the key that was probably meant.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::error::{ConfigError, did_you_mean};

/// Parse `text` (read from `file`) into `T`.
pub fn parse<T: DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
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
            Some(r) => (parent(&path), r),
            None => (path, reason.to_string()),
        };
        ConfigError::new(file, path, format!("{reason}{line}"))
    })
}

fn parent(path: &str) -> String {
    match path.rfind('.') {
        Some(i) => path[..i].to_string(),
        None => ".".to_string(),
    }
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
    fn wrong_type_names_the_key() {
        let err = parse::<Outer>(Path::new("x.yaml"), "name: a\nforwarding:\n  deny: 5\n")
            .expect_err("type error must fail");
        assert_eq!(err.key, "forwarding.deny");
    }
}
