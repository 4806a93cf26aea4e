//! Hostile and broken input, table-driven: every case gives one `lease: ...` line naming the
//! problem, the documented exit code, no panic, and no lease left behind.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Out, Sandbox, wait_until_past};

/// One malformed invocation and what it must produce.
struct Case {
    args: Vec<OsString>,
    env: Vec<(&'static str, OsString)>,
    stdin: Option<Vec<u8>>,
    code: i32,
    says: &'static str,
}

fn case(args: &[&str], code: i32, says: &'static str) -> Case {
    Case {
        args: args.iter().map(OsString::from).collect(),
        env: Vec::new(),
        stdin: None,
        code,
        says,
    }
}

fn bytes(raw: &[u8]) -> OsString {
    OsStr::from_bytes(raw).to_owned()
}

impl Case {
    fn arg_bytes(mut self, index: usize, raw: &[u8]) -> Case {
        self.args[index] = bytes(raw);
        self
    }

    fn env(mut self, name: &'static str, value: OsString) -> Case {
        self.env.push((name, value));
        self
    }

    fn stdin(mut self, input: Vec<u8>) -> Case {
        self.stdin = Some(input);
        self
    }
}

fn check(sandbox: &Sandbox, case: &Case) -> Out {
    let mut cmd = sandbox.lease(&case.args);
    for (name, value) in &case.env {
        cmd = cmd.env(name, value);
    }
    if let Some(input) = &case.stdin {
        cmd = cmd.stdin(input.clone());
    }
    let out = cmd.run();
    let shown = format!("{:?}", case.args);
    assert_eq!(out.code(), Some(case.code), "{shown}: {out:#?}");
    assert!(!out.stderr.contains("panicked"), "{shown}: {out:#?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{shown}: one line on stderr: {out:#?}");
    assert!(lines[0].starts_with("lease: "), "{shown}: {out:#?}");
    assert!(
        lines[0].contains(case.says),
        "{shown}: should say {:?}: {out:#?}",
        case.says
    );
    out
}

#[test]
fn forty_and_more_malformed_inputs_across_every_subcommand() {
    if crate::harness::local_only(
        "several inputs are bad --state-dir values, which have no effect with a broker",
    ) {
        return;
    }
    let sandbox = Sandbox::new();
    let long_scope = "s".repeat(129);
    let many_scopes = (0..300)
        .map(|i| format!("s:{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let a_file = sandbox.path("a-file");
    std::fs::write(&a_file, "").unwrap();
    let a_file = a_file.to_str().unwrap().to_owned();
    let token = Sandbox::new().issue("a");
    let cases = vec![
        // run: 125
        case(&["run"], 125, "required"),
        case(&["run", "--scope", "a"], 125, "CMD"),
        case(
            &["run", "--scope", "a", "echo", "hi"],
            125,
            "put `--` before the command",
        ),
        case(&["run", "--", "true"], 125, "--scope"),
        case(
            &["run", "--scope", "a", "--scrub", "", "--", "true"],
            125,
            "an empty pattern matches no variable",
        ),
        case(&["run", "--scope", "", "--", "true"], 125, "empty"),
        case(&["run", "--scope", "a,,b", "--", "true"], 125, "empty"),
        case(&["run", "--scope", ",a", "--", "true"], 125, "empty"),
        case(
            &["run", "--scope", "a b", "--", "true"],
            125,
            "' ' is not allowed",
        ),
        case(
            &["run", "--scope", "a*b", "--", "true"],
            125,
            "'*' is only allowed as the last",
        ),
        case(
            &["run", "--scope", "**", "--", "true"],
            125,
            "'*' is only allowed as the last",
        ),
        case(
            &["run", "--scope", "é", "--", "true"],
            125,
            "is not allowed",
        ),
        case(
            &["run", "--scope", "a\nb", "--", "true"],
            125,
            "is not allowed",
        ),
        case(
            &["run", "--scope", &long_scope, "--", "true"],
            125,
            "at most 128",
        ),
        case(
            &["run", "--scope", &many_scopes, "--", "true"],
            125,
            "too many scopes",
        ),
        case(&["run", "--scope", "X", "--", "true"], 125, "UTF-8").arg_bytes(2, b"read:\xff"),
        case(
            &["run", "--scope", "a", "--ttl", "0", "--", "true"],
            125,
            "more than 0",
        ),
        case(
            &["run", "--scope", "a", "--ttl", "-1", "--", "true"],
            125,
            "--ttl",
        ),
        case(
            &["run", "--scope", "a", "--ttl", "1.5", "--", "true"],
            125,
            "invalid duration",
        ),
        case(
            &["run", "--scope", "a", "--ttl", "500ms", "--", "true"],
            125,
            "whole number of seconds",
        ),
        case(
            &["run", "--scope", "a", "--ttl", "10 parsecs", "--", "true"],
            125,
            "invalid duration",
        ),
        case(
            &[
                "run",
                "--scope",
                "a",
                "--ttl",
                "99999999999999999999",
                "--",
                "true",
            ],
            125,
            "too large",
        ),
        case(
            &["run", "--scope", "a", "--ttl", "25h", "--", "true"],
            125,
            "too long",
        ),
        case(
            &["run", "--scope", "a", "--ttl", "", "--", "true"],
            125,
            "invalid duration",
        ),
        case(
            &["run", "--scope", "a", "--env", "", "--", "true"],
            125,
            "not a valid environment variable name",
        ),
        case(
            &["run", "--scope", "a", "--env", "9X", "--", "true"],
            125,
            "not a valid environment variable name",
        ),
        case(
            &["run", "--scope", "a", "--env", "A-B", "--", "true"],
            125,
            "not a valid environment variable name",
        ),
        case(
            &["run", "--scope", "a", "--bogus", "--", "true"],
            125,
            "--bogus",
        ),
        case(
            &["run", "--scope", "a", "--state-dir", &a_file, "--", "true"],
            125,
            "not a directory",
        ),
        case(
            &[
                "run",
                "--scope",
                "a",
                "--config",
                "/nonexistent/c.toml",
                "--",
                "true",
            ],
            125,
            "/nonexistent/c.toml",
        ),
        case(
            &["run", "--scope", "a", "--", "true"],
            125,
            "not a directory",
        )
        .env("LEASE_STATE_DIR", a_file.clone().into()),
        // verify: 2 for bad usage, 1 (malformed) for a token that cannot be one
        case(&["verify"], 2, "ACTION"),
        case(&["verify", "a b"], 2, "invalid action"),
        case(&["verify", ""], 2, "invalid action"),
        case(&["verify", "X"], 2, "UTF-8").arg_bytes(1, b"a\xff"),
        case(&["verify", "a", "--token", "agt_x"], 2, "--token"),
        case(
            &["verify", "a", "--token-env", ""],
            2,
            "not a valid environment variable name",
        ),
        case(
            &["verify", "a", "--token-env", "1X"],
            2,
            "not a valid environment variable name",
        ),
        case(
            &["verify", "a", "--token-stdin", "--token-env", "X"],
            2,
            "cannot be used with",
        ),
        case(&["verify", "a", "--token-stdin"], 2, "longer than").stdin(vec![b'a'; 5000]),
        case(&["verify", "a"], 1, "malformed").env("LEASE_TOKEN", bytes(b"agt_\xff\xfe")),
        case(&["verify", "a"], 1, "malformed").env("LEASE_TOKEN", format!("{token} ").into()),
        case(&["verify", "a"], 2, "not a directory")
            .env("LEASE_TOKEN", token.clone().into())
            .env("LEASE_STATE_DIR", a_file.clone().into()),
        // issue: 2
        case(&["issue"], 2, "--scope"),
        case(&["issue", "--scope", "a b"], 2, "is not allowed"),
        case(&["issue", "--scope", "a", "--ttl", "0"], 2, "more than 0"),
        case(
            &["issue", "--scope", "a", "--ttl", "100000h"],
            2,
            "too long",
        ),
        case(&["issue", "--scope", "a", "extra"], 2, "extra"),
        // list, revoke, gc: 2 for bad usage, 1 for an unknown id
        case(&["list", "--bogus"], 2, "--bogus"),
        case(&["list", "extra"], 2, "extra"),
        case(&["list", "--state-dir", &a_file], 2, "not a directory"),
        case(&["revoke"], 2, "required"),
        case(&["revoke", "abc", "--all"], 2, "cannot be used with"),
        case(&["revoke", "X"], 2, "UTF-8").arg_bytes(1, b"\xff"),
        case(&["revoke", "0123456789ab"], 1, "unknown lease id"),
        case(&["revoke", "../../../etc/passwd"], 1, "unknown lease id"),
        case(&["gc", "extra"], 2, "extra"),
        case(&["gc", "--state-dir", &a_file], 2, "not a directory"),
        // the command line itself
        case(&["frobnicate"], 2, "frobnicate"),
        case(&["--state-dir"], 2, "--state-dir"),
        case(
            &["--config", "/nonexistent/c.toml", "list"],
            2,
            "/nonexistent/c.toml",
        ),
    ];
    assert!(cases.len() >= 40);
    for case in &cases {
        check(&sandbox, case);
    }
    assert!(
        sandbox.records().is_empty(),
        "a bad input left a lease behind"
    );
}

#[test]
fn non_utf8_paths_and_arguments_work_where_they_are_valid() {
    if crate::harness::local_only("it checks a --state-dir, which has no effect with a broker") {
        return;
    }
    let sandbox = Sandbox::new();
    let dir = PathBuf::from(bytes(
        &[sandbox.path("state-\u{1}").as_os_str().as_bytes(), b"\xff"].concat(),
    ));
    // The child gets the state dir byte for byte, so a nested verify finds the store.
    sandbox
        .lease(["run", "--scope", "a", "--", "lease", "verify", "a"])
        .env("LEASE_STATE_DIR", &dir)
        .run()
        .success();
    assert!(dir.join("leases").is_dir());
    let out = sandbox
        .lease([
            OsStr::new("run"),
            OsStr::new("--scope"),
            OsStr::new("a"),
            OsStr::new("--"),
            OsStr::new("printf"),
            OsStr::new("%s"),
            &bytes(b"\xff\xfe"),
        ])
        .run()
        .success();
    assert_eq!(
        out.stdout.as_bytes(),
        "\u{fffd}\u{fffd}".as_bytes(),
        "the harness reads stdout lossily"
    );
}

/// A directory mounted as a tiny tmpfs, unmounted on drop. Needs root (CI runs as root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, options: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A sandbox whose state dir is a tmpfs mounted with `options`, or `None` (said on stderr) in
/// broker mode, where the store's disk is the broker's, or where no tmpfs can be mounted.
fn sandbox_on_tmpfs(options: &str) -> Option<(Sandbox, Tmpfs)> {
    if crate::harness::local_only("it breaks the local store's disk") {
        return None;
    }
    let sandbox = Sandbox::new();
    let Some(mount) = Tmpfs::mount(&sandbox.state_dir(), options) else {
        crate::harness::skip("no-tmpfs", "cannot mount a tmpfs here (not root?)");
        return None;
    };
    Some((sandbox, mount))
}

#[test]
fn a_read_only_store_still_verifies_and_refuses_writes_in_one_line() {
    let Some((sandbox, mount)) = sandbox_on_tmpfs("mode=0700,size=1m") else {
        return;
    };
    let live = sandbox.issue("a");
    let expiring = sandbox.issue_json("a", &["--ttl", "1"]);
    mount.remount("ro");
    let verify = |token: &str| sandbox.verify(token, "a");
    verify(&live).success();
    sandbox.lease(["list"]).run().success();
    for (args, code) in [
        (&["run", "--scope", "a", "--", "true"][..], 125),
        (&["issue", "--scope", "a"], 2),
    ] {
        sandbox
            .lease(args)
            .run()
            .code_is(code)
            .one_error_line()
            .stderr_has("Read-only file system");
    }
    // revoke --all reports each lease it could not revoke, and exits 2.
    let out = sandbox.lease(["revoke", "--all"]).run().code_is(2);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{out:#?}");
    assert!(
        lines[..2]
            .iter()
            .all(|l| l.starts_with("lease: warning: skipping")
                && l.contains("Read-only file system")),
        "{out:#?}"
    );
    assert_eq!(
        lines[2],
        "lease: 2 store entries could not be revoked (see the warnings above); every other lease was revoked"
    );
    // Found expired but unable to record it: still denied. The audit trail cannot be written
    // either, which lease reports after the denial.
    wait_until_past(&expiring["expires_at"]);
    let out = verify(expiring["token"].as_str().unwrap()).code_is(1);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(lines[0].starts_with("lease: denied: expired"), "{out:#?}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.starts_with("lease: warning:") && l.contains("audit log")),
        "{out:#?}"
    );
    assert_eq!(sandbox.records().len(), 2);
}

#[test]
fn a_full_disk_fails_in_one_line_and_leaves_nothing_behind() {
    let Some((sandbox, _mount)) = sandbox_on_tmpfs("mode=0700,size=64k") else {
        return;
    };
    let token = sandbox.issue("a");
    // Fill the rest of the disk.
    let filler = sandbox.state_dir().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut file, &block).is_ok() {}
    drop(file);
    let before: Vec<_> = std::fs::read_dir(sandbox.leases_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("No space left on device");
    sandbox
        .lease(["issue", "--scope", "a"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("No space left");
    let after: Vec<_> = std::fs::read_dir(sandbox.leases_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(before, after, "no temp file or record left behind");
    sandbox.verify(&token, "a").success();
}

#[test]
fn a_command_that_fills_the_disk_still_has_its_lease_revoked() {
    let Some((sandbox, _mount)) = sandbox_on_tmpfs("mode=0700,size=64k") else {
        return;
    };
    // The command waits (bounded) for the file its run makes for the revoke while it starts,
    // then fills the disk and fails.
    let state = sandbox.state_dir();
    let out = sandbox
        .run_sh(
            "a",
            r#"cd "$1/leases" || exit 3
            for _ in $(seq 500); do
                for f in .tmp-*; do [ -e "$f" ] && break 2; done
                sleep 0.01
            done
            head -c 1000000 /dev/zero > "$1/filler" 2>/dev/null
            [ -s "$1/filler" ] || exit 4
            exit 7"#,
        )
        .arg("sh")
        .arg(&state)
        .run()
        .code_is(7);
    assert!(
        !out.stderr.contains("could not be revoked"),
        "{}",
        out.stderr
    );
    let listed = sandbox
        .lease(["list", "--all", "--json"])
        .run()
        .success()
        .json();
    assert_eq!(listed[0]["state"], "revoked", "{listed}");
}

#[test]
fn a_failing_write_without_mounts_fails_in_one_line() {
    if crate::harness::local_only("it breaks the local store's disk") {
        return;
    }
    // RLIMIT_FSIZE = 0 makes every write to a file fail (EFBIG) for lease alone; SIGXFSZ is
    // ignored so the write fails instead of killing the process. Works without root.
    let sandbox = Sandbox::new();
    let mut cmd = sandbox.lease(["run", "--scope", "a", "--", "true"]);
    #[allow(unsafe_code)]
    // SAFETY: setrlimit and signal are async-signal-safe and touch only the forked child.
    unsafe {
        cmd.command.pre_exec(|| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE, 0, 0)?;
            nix::sys::signal::signal(
                nix::sys::signal::Signal::SIGXFSZ,
                nix::sys::signal::SigHandler::SigIgn,
            )?;
            Ok(())
        });
    }
    cmd.run()
        .code_is(125)
        .one_error_line()
        .stderr_has("File too large");
    let left: Vec<_> = std::fs::read_dir(sandbox.leases_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A huge value in the config is not echoed whole: the error stays one line of at most 4 KiB,
/// with what went wrong at its start and the fix at its end.
#[test]
fn a_huge_bad_value_in_the_config_makes_a_short_error_line() {
    if crate::harness::local_only("the broker reads its own config, not the client's") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write_config(&format!("max_ttl = \"{}\"\n", "A".repeat(200_000)));
    let out = sandbox
        .lease(["issue", "--scope", "a"])
        .run()
        .code_is(2)
        .one_error_line();
    assert!(out.stderr.len() <= 4096 + 64, "{} bytes", out.stderr.len());
    assert!(
        out.stderr.starts_with("lease: invalid config ")
            && out.stderr.contains("bytes left out")
            && out
                .stderr
                .ends_with("(use seconds like 300, or 5m, 1h30m)\n"),
        "{}",
        out.stderr
    );
}

/// A path or a value quoted in an error can hold a newline or a terminal's escape sequence;
/// the error is still one line, with those shown escaped, so that no script reading the first
/// line misses the rest and no quoted value can drive the terminal.
#[test]
fn a_newline_or_an_escape_quoted_in_an_error_is_shown_escaped_on_one_line() {
    let sandbox = Sandbox::new();
    let config = sandbox.path("no\nsuch\u{1b}[2J");
    let out = sandbox
        .lease([
            "--config",
            config.to_str().unwrap(),
            "issue",
            "--scope",
            "a",
        ])
        .run()
        .code_is(2)
        .one_error_line();
    assert!(
        out.stderr.contains(r"no\nsuch\u{1b}[2J") && !out.stderr.contains('\u{1b}'),
        "{}",
        out.stderr
    );
    let out = sandbox
        .lease(["run", "--scope", "read:a\nb", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line();
    assert!(out.stderr.contains(r"read:a\nb"), "{}", out.stderr);
    assert!(sandbox.states().is_empty(), "a lease was left behind");
}
