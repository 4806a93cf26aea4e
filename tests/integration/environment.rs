//! The command's environment: `--scrub`, `scrub_env`, `--clean-env` and `--keep`, and
//! `--print-env` showing it without minting.

use crate::harness::Sandbox;

#[test]
fn scrub_removes_long_lived_secrets_and_clean_env_starts_from_nothing() {
    if crate::harness::local_only("a run through a broker passes LEASE_BROKER, not a state dir") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write_config("scrub_env = [\"AWS_*\"]\n");
    let show = "env | grep -E '^(AWS_|GITHUB_TOKEN|NPM_TOKEN|KEEP_ME|HOME|LEASE_)' | cut -d= -f1 | sort | tr '\\n' ' '";
    let out = sandbox
        .lease([
            "run", "--scope", "a", "--scrub", "*_TOKEN", "--", "sh", "-c", show,
        ])
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("GITHUB_TOKEN", "y")
        .env("NPM_TOKEN", "z")
        .env("KEEP_ME", "k")
        .run()
        .success();
    assert_eq!(
        out.stdout.trim(),
        "HOME KEEP_ME LEASE_EXPIRES_AT LEASE_ID LEASE_SCOPE LEASE_STATE_DIR LEASE_TOKEN LEASE_TOKEN_ENV"
    );
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "a",
            "--clean-env",
            "--keep",
            "KEEP_ME",
            "--",
            "/usr/bin/env",
        ])
        .env("KEEP_ME", "k")
        .run()
        .success();
    let names: Vec<&str> = out
        .stdout
        .lines()
        .map(|l| l.split('=').next().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "KEEP_ME",
            "LEASE_EXPIRES_AT",
            "LEASE_ID",
            "LEASE_SCOPE",
            "LEASE_STATE_DIR",
            "LEASE_TOKEN",
            "LEASE_TOKEN_ENV"
        ]
    );
    sandbox
        .lease(["run", "--scope", "a", "--keep", "X", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line();
}

#[test]
fn print_env_shows_what_the_command_would_get_without_minting() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "a,b",
            "--scrub",
            "GITHUB_*",
            "--print-env",
        ])
        .env("GITHUB_TOKEN", "ghp_x")
        .env("OTHER", "1")
        .run()
        .success();
    assert!(
        out.stdout.contains("OTHER=1\n") && out.stdout.contains("LEASE_SCOPE=a,b\n"),
        "{out:#?}"
    );
    assert!(!out.stdout.contains("GITHUB_TOKEN"), "{out:#?}");
    assert!(
        !out.stdout.contains("agt_"),
        "no token is shown (or minted)"
    );
    assert!(sandbox.records().is_empty(), "nothing was minted");
}

/// `LEASE_TOKEN_ENV` names where a token is, and a nested run drops that variable from its
/// command's environment: it obeys the rules of `--env` (not `PATH`, `LD_*`, ...), or the
/// user's `PATH` would be dropped, or read as a token.
#[test]
fn lease_token_env_may_name_only_a_variable_a_token_may_be_in() {
    let sandbox = Sandbox::new();
    let why =
        "$LEASE_TOKEN_ENV does not name a variable a token may be in: PATH cannot carry the token";
    sandbox
        .lease(["verify", "read:x"])
        .env("LEASE_TOKEN_ENV", "PATH")
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has(why);
    let ran = sandbox.path("ran");
    sandbox
        .lease(["run", "--scope", "read:x", "--", "touch"])
        .arg(&ran)
        .env("LEASE_TOKEN_ENV", "LD_PRELOAD")
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("LD_PRELOAD cannot carry the token");
    assert!(!ran.exists(), "the command ran");
    assert!(sandbox.records().is_empty());
}
