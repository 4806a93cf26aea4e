//! Pinned output: the exact words of what users read most, each message with its exit status,
//! kept in tests/snapshots/ and reviewed in the diff like code: `--help` of lease and of every
//! subcommand, every reason `verify` gives for a denial (on stderr and as `--json`), and every
//! class of usage error, for `run` (125) and for the other subcommands (2).
//!
//! A changed message fails its test with a diff, in normal runs and under `CI=true`. When the
//! change is meant, rewrite the files with `SNAPSHOTS=overwrite scripts/test.sh pinned` and
//! review `git diff tests/snapshots/` before committing (see `harness::Transcript`).

use std::fs;

use crate::harness::{Sandbox, Transcript};

/// Every subcommand, as `lease --help` lists them (without `help`).
const SUBCOMMANDS: [&str; 13] = [
    "run",
    "verify",
    "issue",
    "list",
    "revoke",
    "renew",
    "status",
    "log",
    "suggest",
    "gc",
    "serve",
    "completions",
    "man",
];

#[test]
fn help_of_lease_and_of_every_subcommand_is_pinned() {
    if crate::harness::local_only(
        "the pinned help shows the environment, and LEASE_BROKER's value is the sandbox's",
    ) {
        return;
    }
    let sandbox = Sandbox::new();
    let mut transcript = Transcript::new(&sandbox);
    let help = transcript.run(sandbox.lease(["--help"])).stdout;
    transcript.matches("help/lease.txt");
    let listed: Vec<&str> = help
        .split("\nCommands:\n")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.strip_prefix("  ")?.split(' ').next())
        .filter(|name| !name.is_empty() && *name != "help")
        .collect();
    assert_eq!(listed, SUBCOMMANDS, "every subcommand has its help pinned");
    for sub in SUBCOMMANDS {
        let mut transcript = Transcript::new(&sandbox);
        transcript.run(sandbox.lease([sub, "--help"])).success();
        transcript.matches(&format!("help/lease-{sub}.txt"));
    }
}

/// Pins `lease verify ACTION` and `lease verify ACTION --json` with `token` in LEASE_TOKEN, as
/// tests/snapshots/deny/`reason`.txt, and checks that both deny for `reason`.
#[track_caller]
fn pin_denial(sandbox: &Sandbox, token: &str, action: &str, reason: &str) {
    let mut transcript = Transcript::new(sandbox);
    let line = transcript.run(sandbox.lease(["verify", action]).env("LEASE_TOKEN", token));
    let json = transcript.run(
        sandbox
            .lease(["verify", action, "--json"])
            .env("LEASE_TOKEN", token),
    );
    transcript.matches(&format!("deny/{}.txt", reason.replace(' ', "-")));
    assert_eq!(line.code(), Some(1), "{line:#?}");
    assert_eq!(json.json()["reason"], reason, "{json:#?}");
}

/// Mints a lease nested in the lease of `parent`'s token; returns its token.
fn issue_under(sandbox: &Sandbox, parent: &serde_json::Value, scope: &str) -> String {
    let out = sandbox
        .lease(["issue", "--scope", scope])
        .env("LEASE_TOKEN", parent["token"].as_str().expect("token"))
        .run()
        .success();
    out.stdout.trim().to_owned()
}

/// Sets `key` in the record of lease `id` to `value` (TOML), keeping the file's mode.
fn edit_record(sandbox: &Sandbox, id: &serde_json::Value, key: &str, value: &str) {
    let path = sandbox.record_path(id);
    let record = fs::read_to_string(&path).expect("record");
    let prefix = format!("{key} = ");
    let line = record
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {key} in {record}"));
    fs::write(&path, record.replace(line, &format!("{prefix}{value}"))).expect("record");
}

/// A time every lease has outlived.
const LONG_AGO: &str = "\"2000-01-01T00:00:00Z\"";

/// A boot of this machine that is not the current one.
const ANOTHER_BOOT: &str = "\"00000000-0000-0000-0000-000000000000\"";

#[test]
fn each_reason_of_a_lease_of_its_own_is_pinned() {
    if crate::harness::local_only(
        "the pinned transcripts name the store and the environment of local runs",
    ) {
        return;
    }
    let sandbox = Sandbox::new();

    let unknown = sandbox.issue_json("a", &[]);
    fs::remove_file(sandbox.record_path(&unknown["id"])).unwrap();
    pin_denial(&sandbox, unknown["token"].as_str().unwrap(), "a", "unknown");

    pin_denial(&sandbox, "agt_nope", "a", "malformed");

    let expired = sandbox.issue_json("a", &[]);
    edit_record(&sandbox, &expired["id"], "expires_at", LONG_AGO);
    pin_denial(&sandbox, expired["token"].as_str().unwrap(), "a", "expired");

    let revoked = sandbox.issue_json("a", &[]);
    sandbox
        .lease(["revoke", revoked["id"].as_str().unwrap()])
        .run()
        .success();
    pin_denial(&sandbox, revoked["token"].as_str().unwrap(), "a", "revoked");

    let scoped = sandbox.issue("read:a");
    pin_denial(&sandbox, &scoped, "write:a", "out of scope");

    let used = sandbox.issue_json("a", &["--uses", "1"]);
    let used_token = used["token"].as_str().unwrap();
    sandbox.verify(used_token, "a").success();
    pin_denial(&sandbox, used_token, "a", "used up");

    let corrupt = sandbox.issue_json("a", &[]);
    fs::write(sandbox.record_path(&corrupt["id"]), "garbage").unwrap();
    pin_denial(
        &sandbox,
        corrupt["token"].as_str().unwrap(),
        "a",
        "corrupt record",
    );
}

#[test]
fn each_reason_of_a_dead_parent_is_pinned() {
    if crate::harness::files_only("edits record files to make each reason") {
        return;
    }
    let sandbox = Sandbox::new();
    let parent = sandbox.issue_json("a", &[]);
    let child = issue_under(&sandbox, &parent, "a");
    sandbox
        .lease(["revoke", parent["id"].as_str().unwrap()])
        .run()
        .success();
    pin_denial(&sandbox, &child, "a", "parent revoked");

    let parent = sandbox.issue_json("a", &[]);
    let child = issue_under(&sandbox, &parent, "a");
    edit_record(&sandbox, &parent["id"], "expires_at", LONG_AGO);
    pin_denial(&sandbox, &child, "a", "parent expired");

    let parent = sandbox.issue_json("a", &[]);
    let child = issue_under(&sandbox, &parent, "a");
    fs::remove_file(sandbox.record_path(&parent["id"])).unwrap();
    pin_denial(&sandbox, &child, "a", "parent gone");
}

#[test]
fn owner_gone_of_a_lease_and_of_its_parent_is_pinned() {
    if crate::harness::files_only("edits record files to make the owner gone") {
        return;
    }
    let sandbox = Sandbox::new();
    let mut run = sandbox
        .run_sh(
            "a",
            "echo $LEASE_ID $LEASE_TOKEN $(lease issue --scope a); read line",
        )
        .start();
    let line = run.lines.expect("agt_");
    let words: Vec<&str> = line.split(' ').collect();
    let [id, token, child] = words[..] else {
        panic!("{line:?}");
    };
    // The run is alive, but its record says it began before a reboot.
    edit_record(&sandbox, &serde_json::json!(id), "boot_id", ANOTHER_BOOT);
    pin_denial(&sandbox, token, "a", "owner gone");
    pin_denial(&sandbox, child, "a", "parent owner gone");
    // Closing its stdin ends the run's `read`, and so the run.
    drop(run.child.stdin.take());
    run.wait();
}

#[test]
fn no_token_is_pinned_with_exit_2() {
    let sandbox = Sandbox::new();
    let mut transcript = Transcript::new(&sandbox);
    transcript
        .run(sandbox.lease(["verify", "a"]))
        .code_is(2)
        .one_error_line();
    let json = transcript.run(sandbox.lease(["verify", "a", "--json"]));
    assert_eq!(json.json()["reason"], "no token", "{json:#?}");
    transcript.matches("deny/no-token.txt");
}

/// `verify --json` answers `"reason": "error"` (exit 2) whatever kept it from deciding: a
/// config that cannot be read stops it before the store is opened, and still has its answer.
#[test]
fn verify_json_answers_error_when_the_config_cannot_be_read() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("no_such_key = 1\n");
    let out = sandbox
        .lease(["verify", "a", "--json"])
        .env("LEASE_CONFIG", &config)
        .env("LEASE_TOKEN", format!("agt_{}", "A".repeat(48)))
        .run()
        .code_is(2)
        .one_error_line();
    assert!(out.stderr.contains("no_such_key"), "{out:?}");
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(json["reason"], "error", "{out:?}");
    assert_eq!(json["granted"], false, "{out:?}");
}

/// ... and so does a command line it cannot parse (a bad action, an unknown flag, a bad
/// `--token-env`): the answer on stdout, the one line on stderr. Without `--json`, stdout
/// stays empty.
#[test]
fn verify_json_answers_error_when_its_command_line_is_wrong() {
    let sandbox = Sandbox::new();
    let cases: [&[&str]; 4] = [
        &["verify", "bad action", "--json"],
        &["verify", "--json", "a", "--bogus"],
        &["verify", "a", "--token-env", "1X", "--json"],
        &["--verbose", "verify", "--json"],
    ];
    for args in cases {
        let out = sandbox
            .lease(args)
            .env("LEASE_TOKEN", format!("agt_{}", "A".repeat(48)))
            .run()
            .code_is(2)
            .one_error_line();
        let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
        assert_eq!(json["reason"], "error", "{args:?}: {out:?}");
        assert_eq!(json["granted"], false, "{args:?}: {out:?}");
        let without: Vec<&str> = args.iter().copied().filter(|a| *a != "--json").collect();
        let out = sandbox.lease(without).run().code_is(2).one_error_line();
        assert_eq!(out.stdout, "", "{args:?}");
    }
}

/// Runs each of `args` and pins them together as tests/snapshots/usage/`class`.txt, checking
/// that each fails with one line on stderr and the status of its subcommand: 125 for `run`,
/// 2 for the others.
#[track_caller]
fn pin_usage_errors(sandbox: &Sandbox, class: &str, cases: &[&[&str]]) {
    let mut transcript = Transcript::new(sandbox);
    for args in cases {
        let out = transcript.run(sandbox.lease(*args));
        let code = if args.first() == Some(&"run") { 125 } else { 2 };
        assert_eq!(out.code(), Some(code), "{args:?}: {out:#?}");
        if !args.is_empty() {
            out.one_error_line();
        }
    }
    transcript.matches(&format!("usage/{class}.txt"));
}

#[test]
fn each_class_of_usage_error_is_pinned_for_run_and_for_the_others() {
    if crate::harness::local_only(
        "the pinned help shows the environment, and LEASE_BROKER's value is the sandbox's",
    ) {
        return;
    }
    let sandbox = Sandbox::new();
    let token = sandbox.issue("a");
    let token = token.as_str();
    let classes: [(&str, &[&[&str]]); 7] = [
        (
            "unknown-flag",
            &[
                &["run", "--scope", "a", "--bogus", "--", "true"],
                &["issue", "--scope", "a", "--bogus"],
            ],
        ),
        (
            "missing-double-dash",
            &[
                &["run", "--scope", "a", "true"],
                &["issue", "--scope", "a", "--", "true"],
            ],
        ),
        (
            "bad-scope",
            &[
                &["run", "--scope", "a b", "--", "true"],
                &["issue", "--scope", "a b"],
            ],
        ),
        (
            "bad-ttl",
            &[
                &["run", "--scope", "a", "--ttl", "soon", "--", "true"],
                &["issue", "--scope", "a", "--ttl", "soon"],
            ],
        ),
        (
            "token-in-the-wrong-place",
            &[
                &["run", "--scope", token, "--", "true"],
                &["run", "--scope", "a", "--env", token, "--", "true"],
                &["verify", token],
                &["suggest", token],
            ],
        ),
        (
            "missing-command",
            &[
                &["run", "--scope", "a"],
                &["run", "--scope", "a", "--"],
                &[],
                &["verify"],
            ],
        ),
        (
            "conflicting-flags",
            &[
                &["run", "--scope", "a", "--keep", "X", "--", "true"],
                &[
                    "run", "--scope", "a", "--ttl", "5m", "--ttl", "6m", "--", "true",
                ],
                &["verify", "a", "--token-stdin", "--token-env", "X"],
                &["revoke", "--all", "--self"],
            ],
        ),
    ];
    for (class, cases) in classes {
        pin_usage_errors(&sandbox, class, cases);
    }
}
