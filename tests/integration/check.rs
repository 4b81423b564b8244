//! `outpost check`: offline validation that names file, key and reason.

use crate::harness::*;

fn run_check(cfg: &Config) -> (bool, String) {
    let out = cfg.command("check").output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn broken_configuration_fails_naming_file_and_key() {
    let cfg = Config::new().env("GH_TOKEN", "tok-check-secret");
    cfg.provider("good.yaml", "name: good\nbase_url: https://api.github.com\nauth: {type: bearer_static, env: GH_TOKEN}\n");
    let (ok, text) = run_check(&cfg);
    assert!(ok, "{text}");
    assert!(text.contains("configuration OK"), "{text}");

    cfg.provider("typo.yaml", "name: typo\nbase_url: https://x.example\nauth: {type: none}\nforwarding:\n  denny: [/admin/**]\n");
    cfg.provider("nosecret.yaml", "name: nosecret\nbase_url: https://x.example\nauth: {type: bearer_static, env: MISSING_VAR}\n");
    cfg.provider(
        "badtype.yaml",
        "name: badtype\nbase_url: https://x.example\nauth: {type: bearer_statc, env: GH_TOKEN}\n",
    );
    cfg.provider("badkey.yaml", "name: badkey\nbase_url: https://x.example\nauth: {type: bearer_static, env: GH_TOKEN, prefx: 'Token '}\n");
    let (ok, text) = run_check(&cfg);
    assert!(!ok, "{text}");
    assert!(
        text.contains("typo.yaml: forwarding: unknown key 'denny' (did you mean 'deny'?)"),
        "{text}"
    );
    assert!(
        text.contains(
            "nosecret.yaml: auth: BearerStaticAuth: env var 'MISSING_VAR' is not set or empty."
        ),
        "{text}"
    );
    assert!(
        text.contains("badtype.yaml: auth: Unknown auth type 'bearer_statc'"),
        "{text}"
    );
    assert!(text.contains("badkey.yaml: auth: BearerStaticAuth: unknown config key 'prefx' (did you mean 'prefix'?)"), "{text}");
    assert!(text.contains("4 problem(s) found"), "{text}");
    assert!(!text.contains("tok-check-secret"), "{text}");
}

#[test]
fn bad_hosts_file_and_settings_fail() {
    let cfg = Config::new();
    cfg.hosts("hosts:\n  - id: a\n    cidrs: [10.0.0.0/99]\n");
    let (ok, text) = run_check(&cfg);
    assert!(!ok);
    assert!(text.contains("hosts.yaml: hosts[0].cidrs[0]"), "{text}");

    let cfg = Config::new().env("PROXY_PORT", "http");
    let (ok, text) = run_check(&cfg);
    assert!(!ok);
    assert!(
        text.contains("environment: PROXY_PORT: invalid value \"http\""),
        "{text}"
    );
}

#[test]
fn shipped_quickstart_example_is_valid() {
    let root = root();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outpost"))
        .args(["check", "--providers-dir"])
        .arg(root.join("examples/quickstart/providers"))
        .arg("--hosts")
        .arg(root.join("examples/quickstart/hosts.yaml"))
        .arg("--plugins-dir")
        .arg(root.join("examples/quickstart/plugins"))
        .env_clear()
        .env("OUTPOST_CACHE_DIR", "")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("configuration OK"), "{text}");
}

#[test]
fn shipped_providers_pass_check_when_enabled() {
    let cfg = Config::new()
        .env("GITHUB_TOKEN", "dummy")
        .env("OPENAI_API_KEY", "dummy")
        .env("STRIPE_SECRET_KEY", "dummy")
        .env("SLACK_BOT_TOKEN", "dummy")
        .env("JIRA_EMAIL", "dummy")
        .env("JIRA_API_TOKEN", "dummy")
        .env("ANTHROPIC_API_KEY", "dummy")
        .env("GROWW_API_KEY", "dummy")
        .env("GROWW_API_SECRET", "dummy")
        .env("UPSTOX_ACCESS_TOKEN", "dummy")
        .env("NOTION_API_KEY", "dummy")
        .env("TWILIO_ACCOUNT_SID", "dummy")
        .env("TWILIO_AUTH_TOKEN", "dummy")
        .env("AWS_ACCESS_KEY_ID", "dummy")
        .env("AWS_SECRET_ACCESS_KEY", "dummy");
    let mut count = 0;
    for entry in std::fs::read_dir(root().join("providers")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("enabled: false"),
            "{} must ship disabled",
            path.display()
        );
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        cfg.provider(&name, &text.replace("enabled: false", "enabled: true"));
        count += 1;
    }
    let (ok, text) = run_check(&cfg);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("{count} provider(s) usable")),
        "{text}"
    );
}
