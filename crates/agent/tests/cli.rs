//! The command line: help, flag/env/file precedence, and exit code 2 naming the flag or key.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{cmd, run, text};

const T: Duration = Duration::from_secs(30);

fn usage_error(args: &[&str], envs: &[(&str, &str)]) -> String {
    let mut c = cmd(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = run(c, T);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: expected exit 2; stderr:\n{stderr}"
    );
    stderr
}

#[test]
fn proxy_help_lists_every_flag() {
    let out = run(cmd(&["proxy", "--help"]), T);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for flag in [
        "--listen",
        "--upstream",
        "--provider-name",
        "--route-name",
        "--max-attempts",
        "--deadline",
        "--per-attempt-timeout",
        "--budget-ratio",
        "--budget-min-per-sec",
        "--budget-ttl",
        "--evidence-file",
        "--evidence-max-size",
        "--evidence-keep",
        "--api-key-env",
        "--api-key-header",
        "--caller-token-env",
        "--allowed-host",
        "--allowed-origin",
        "--max-body",
        "--header-read-timeout",
        "--body-read-timeout",
        "--idle-timeout",
        "--max-connections",
        "--max-in-flight",
        "--threads",
        "--config",
    ] {
        assert!(help.contains(flag), "proxy --help lacks {flag}:\n{help}");
        let env = format!(
            "RETRYBUDGET_{}",
            flag.trim_start_matches("--")
                .replace('-', "_")
                .to_ascii_uppercase()
        );
        assert!(help.contains(&env), "proxy --help lacks {env}:\n{help}");
    }
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["proxy", "fake-upstream", "smoke", "probe", "demo", "report"] {
        let out = run(cmd(&[sub, "--help"]), T);
        assert!(out.status.success(), "{sub} --help");
        assert!(text(&out.stdout).contains("Usage: retrybudget"), "{sub}");
    }
}

#[test]
fn bad_flag_value_is_exit_2_naming_the_flag_and_range() {
    let e = usage_error(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--budget-ratio",
            "2",
        ],
        &[],
    );
    assert!(
        e.contains("--budget-ratio") && e.contains("0.0 to 1.0"),
        "{e}"
    );
    let e = usage_error(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--max-attempts",
            "0",
        ],
        &[],
    );
    assert!(e.contains("--max-attempts") && e.contains("100"), "{e}");
    let e = usage_error(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--deadline",
            "soon",
        ],
        &[],
    );
    assert!(e.contains("--deadline"), "{e}");
    let e = usage_error(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--budget-min-per-sec",
            "-1",
        ],
        &[],
    );
    assert!(e.contains("--budget-min-per-sec"), "{e}");
    let e = usage_error(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--max-body",
            "2GiB",
        ],
        &[],
    );
    assert!(e.contains("--max-body") && e.contains("1GiB"), "{e}");
    let e = usage_error(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--evidence-max-size",
            "100",
        ],
        &[],
    );
    assert!(
        e.contains("--evidence-max-size") && e.contains("1KiB"),
        "{e}"
    );
    let e = usage_error(
        &["proxy", "--upstream", "http://127.0.0.1:1"],
        &[("RETRYBUDGET_EVIDENCE_KEEP", "5000")],
    );
    assert!(e.contains("RETRYBUDGET_EVIDENCE_KEEP"), "{e}");
    let e = usage_error(&["proxy", "--upstream", "ftp://example"], &[]);
    assert!(e.contains("--upstream"), "{e}");
    let e = usage_error(&["proxy"], &[]);
    assert!(e.contains("--upstream"), "{e}");
    let e = usage_error(&["demo", "--rate", "0"], &[]);
    assert!(e.contains("--rate"), "{e}");
}

#[test]
fn bad_config_file_is_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let unknown = write(
        "unknown.toml",
        "upstream = \"http://127.0.0.1:1\"\ncolour = \"blue\"\n",
    );
    let e = usage_error(&["proxy", "--config", &unknown], &[]);
    assert!(e.contains("colour") && e.contains("unknown field"), "{e}");

    let ratio = write(
        "ratio.toml",
        "upstream = \"http://127.0.0.1:1\"\nbudget_ratio = 5.0\n",
    );
    let e = usage_error(&["proxy", "--config", &ratio], &[]);
    assert!(
        e.contains("config key `budget_ratio`") && e.contains("0.0 to 1.0"),
        "{e}"
    );

    let ttl = write(
        "ttl.toml",
        "upstream = \"http://127.0.0.1:1\"\nbudget_ttl = \"10ms\"\n",
    );
    let e = usage_error(&["proxy", "--config", &ttl], &[]);
    assert!(
        e.contains("config key `budget_ttl`") && e.contains("100ms to 1h"),
        "{e}"
    );

    let deadline = write(
        "deadline.toml",
        "upstream = \"http://127.0.0.1:1\"\ndeadline = \"soon\"\n",
    );
    let e = usage_error(&["proxy", "--config", &deadline], &[]);
    assert!(e.contains("`deadline`"), "{e}");

    let typed = write(
        "typed.toml",
        "upstream = \"http://127.0.0.1:1\"\nmax_attempts = \"three\"\n",
    );
    let e = usage_error(&["proxy", "--config", &typed], &[]);
    assert!(e.contains("max_attempts"), "{e}");

    let e = usage_error(
        &[
            "proxy",
            "--config",
            dir.path().join("missing.toml").to_str().unwrap(),
        ],
        &[],
    );
    assert!(e.contains("--config"), "{e}");
}

#[test]
fn precedence_is_flag_then_env_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad-ratio.toml");
    std::fs::write(&file, "budget_ratio = 5.0\n").unwrap();
    let file = file.to_str().unwrap();
    // The file's bad value alone is reported as the file's key.
    let e = usage_error(
        &["proxy", "--config", file, "--upstream", "ftp://example"],
        &[],
    );
    assert!(e.contains("config key `budget_ratio`"), "{e}");
    // A valid environment value wins over the file: the next error is about the upstream.
    let e = usage_error(
        &["proxy", "--config", file, "--upstream", "ftp://example"],
        &[("RETRYBUDGET_BUDGET_RATIO", "0.5")],
    );
    assert!(
        e.contains("--upstream") && !e.contains("budget_ratio"),
        "{e}"
    );
    // A bad environment value is reported as the environment variable.
    let e = usage_error(
        &["proxy", "--upstream", "http://127.0.0.1:1"],
        &[("RETRYBUDGET_BUDGET_RATIO", "7")],
    );
    assert!(e.contains("RETRYBUDGET_BUDGET_RATIO"), "{e}");
    // A valid flag wins over a bad environment value.
    let e = usage_error(
        &[
            "proxy",
            "--upstream",
            "ftp://example",
            "--budget-ratio",
            "0.2",
        ],
        &[("RETRYBUDGET_BUDGET_RATIO", "7")],
    );
    assert!(
        e.contains("--upstream") && !e.contains("BUDGET_RATIO"),
        "{e}"
    );
    // The environment supplies a required setting too.
    let e = usage_error(
        &["proxy", "--max-attempts", "0"],
        &[("RETRYBUDGET_UPSTREAM", "http://127.0.0.1:1")],
    );
    assert!(e.contains("--max-attempts"), "{e}");
}

#[test]
fn api_key_env_naming_an_unset_variable_is_exit_2() {
    let e = usage_error(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--api-key-env",
            "RETRYBUDGET_TEST_SURELY_UNSET_KEY",
        ],
        &[],
    );
    assert!(
        e.contains("RETRYBUDGET_TEST_SURELY_UNSET_KEY") && e.contains("not set"),
        "{e}"
    );
    let e = usage_error(
        &[
            "smoke",
            "--self-test",
            "--api-key-env",
            "RETRYBUDGET_TEST_SURELY_UNSET_KEY",
        ],
        &[],
    );
    assert!(e.contains("RETRYBUDGET_TEST_SURELY_UNSET_KEY"), "{e}");
}

#[test]
fn a_key_on_a_reachable_address_without_a_caller_token_is_exit_2() {
    let key = [("RETRYBUDGET_TEST_PROVIDER_KEY", "sk-never-printed-4711")];
    let e = usage_error(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--listen",
            "0.0.0.0:0",
            "--api-key-env",
            "RETRYBUDGET_TEST_PROVIDER_KEY",
        ],
        &key,
    );
    assert!(
        e.contains("refusing to start") && e.contains("--caller-token-env"),
        "{e}"
    );
    assert!(!e.contains("sk-never-printed-4711"), "{e}");

    let short = [key[0], ("RETRYBUDGET_TEST_CALLER_TOKEN", "short")];
    let e = usage_error(
        &[
            "proxy",
            "--upstream",
            "http://127.0.0.1:1",
            "--listen",
            "0.0.0.0:0",
            "--api-key-env",
            "RETRYBUDGET_TEST_PROVIDER_KEY",
            "--caller-token-env",
            "RETRYBUDGET_TEST_CALLER_TOKEN",
        ],
        &short,
    );
    assert!(
        e.contains("RETRYBUDGET_TEST_CALLER_TOKEN") && e.contains("16"),
        "{e}"
    );
    assert!(!e.contains("short\""), "{e}");
}

#[test]
fn listener_limits_and_access_flags_are_checked() {
    for (args, named) in [
        (
            &["--header-read-timeout", "1ms"][..],
            "--header-read-timeout",
        ),
        (&["--max-connections", "0"][..], "--max-connections"),
        (&["--max-in-flight", "0"][..], "--max-in-flight"),
        (&["--threads", "0"][..], "--threads"),
        (&["--threads", "257"][..], "--threads"),
        (&["--api-key-header", "bad header"][..], "--api-key-header"),
        (
            &["--allowed-origin", "https://app.example/path"][..],
            "--allowed-origin",
        ),
    ] {
        let mut all = vec!["proxy", "--upstream", "http://127.0.0.1:1"];
        all.extend_from_slice(args);
        let e = usage_error(&all, &[]);
        assert!(e.contains(named), "{args:?}: {e}");
    }
}
