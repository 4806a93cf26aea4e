//! The command line as users read it: help, version, and usage errors.

use crate::harness::Sandbox;

#[test]
fn help_teaches_with_examples_and_exits_0() {
    let sandbox = Sandbox::new();
    let out = sandbox.lease(["--help"]).run().success();
    assert!(out.stdout.contains("Usage: lease"), "{out:#?}");
    assert!(out.stdout.contains("Examples:"), "{out:#?}");
    for place in ["agent", "CI job step", "Makefile", "one-off"] {
        assert!(
            out.stdout.contains(place),
            "no example for {place}: {}",
            out.stdout
        );
    }
    let subcommands = [
        "run",
        "verify",
        "issue",
        "list",
        "revoke",
        "gc",
        "renew",
        "status",
        "log",
        "suggest",
        "completions",
        "man",
    ];
    for sub in subcommands {
        assert!(out.stdout.contains(sub), "{sub} missing from help");
        let help = sandbox.lease([sub, "--help"]).run().success();
        assert!(
            help.stdout.contains(&format!("Usage: lease {sub}")),
            "{help:#?}"
        );
        assert!(
            help.stdout.contains("Examples:"),
            "no examples in `lease {sub} --help`"
        );
    }
    let run_help = sandbox.lease(["run", "-h"]).run().success().stdout;
    for flag in [
        "--scope",
        "--ttl",
        "--env",
        "--profile",
        "--uses",
        "--on-expiry",
        "--mask",
        "--receipt",
        "--scrub",
    ] {
        assert!(run_help.contains(flag), "{flag} missing from run help");
    }
}

#[test]
fn version_prints_name_and_version() {
    let out = Sandbox::new().lease(["-V"]).run().success();
    assert_eq!(
        out.stdout.trim(),
        format!("lease {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_outside_run_exit_2_in_one_line() {
    let sandbox = Sandbox::new();
    for args in [
        &["frobnicate"][..],
        &["list", "--bogus"],
        &["gc", "extra"],
        &["--state-dir"],
    ] {
        let out = sandbox.lease(args).run();
        assert_eq!(out.code(), Some(2), "{args:?}: {out:#?}");
        out.one_error_line();
    }
    let bare = sandbox.lease(Vec::<&str>::new()).run();
    assert_eq!(bare.code(), Some(2));
    assert!(bare.stderr.contains("Usage: lease"), "{bare:#?}");
}

#[test]
fn non_utf8_arguments_are_handled() {
    use std::os::unix::ffi::OsStrExt;
    let sandbox = Sandbox::new();
    let bad = std::ffi::OsStr::from_bytes(b"read:\xff");
    let out = sandbox
        .lease([
            std::ffi::OsStr::new("run"),
            std::ffi::OsStr::new("--scope"),
            bad,
            std::ffi::OsStr::new("--"),
            std::ffi::OsStr::new("true"),
        ])
        .run();
    assert_eq!(out.code(), Some(125), "{out:#?}");
    out.one_error_line();
    // The command's own arguments may be any bytes.
    let out = sandbox
        .lease([
            std::ffi::OsStr::new("run"),
            std::ffi::OsStr::new("--scope"),
            std::ffi::OsStr::new("a"),
            std::ffi::OsStr::new("--"),
            std::ffi::OsStr::new("printf"),
            std::ffi::OsStr::new("%s"),
            bad,
        ])
        .run();
    assert_eq!(out.code(), Some(0), "{out:#?}");
}

/// `run` and `verify` read their usual lines without clap; an empty `LEASE_STATE_DIR` or
/// `LEASE_CONFIG` (or `--state-dir ''`, `--config ''`) names nothing, and is refused by every
/// subcommand alike, naming the variable or the option (no fallback to the default store or
/// policy).
#[test]
fn an_empty_state_dir_or_config_variable_is_refused_by_every_subcommand_alike() {
    let sandbox = Sandbox::new();
    for (variable, option, what) in [
        ("LEASE_STATE_DIR", "--state-dir", "a directory"),
        ("LEASE_CONFIG", "--config", "a file"),
    ] {
        for (args, code) in [
            (&["run", "--scope", "a", "--", "true"][..], 125),
            (&["verify", "a"], 2),
            (&["issue", "--scope", "a"], 2),
            (&["list"], 2),
        ] {
            let out = sandbox.lease(args).env(variable, "").run();
            assert_eq!(out.code(), Some(code), "{variable}: {out:#?}");
            assert_eq!(
                out.stderr,
                format!("lease: {variable} is set but empty: unset it, or give {what}\n"),
                "{variable}"
            );
            let given = [&args[..1], &[option, ""], &args[1..]].concat();
            let out = sandbox.lease(&given).run();
            assert_eq!(out.code(), Some(code), "{option}: {out:#?}");
            assert_eq!(
                out.stderr,
                format!("lease: {option} is empty: give {what}, or leave {option} out\n"),
                "{option}"
            );
        }
    }
    assert!(sandbox.records().is_empty());
    // An empty --broker is refused alike, rather than meaning the local store; an empty
    // LEASE_BROKER means no broker.
    for (args, code) in [
        (
            &["run", "--broker", "", "--scope", "a", "--", "true"][..],
            125,
        ),
        (&["verify", "--broker=", "a"], 2),
        (&["list", "--broker", ""], 2),
    ] {
        let out = sandbox.lease(args).run();
        assert_eq!(out.code(), Some(code), "{out:#?}");
        assert!(
            out.stderr
                .starts_with("lease: --broker is empty: give a broker's URL"),
            "{out:#?}"
        );
    }
    assert!(sandbox.records().is_empty());
    sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .env("LEASE_BROKER", "")
        .run()
        .success();
}
