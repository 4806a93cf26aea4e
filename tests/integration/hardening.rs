//! Issue 9's regressions: tokens typed in the wrong place, tokens under other names, core dumps,
//! `--print-env`, and variable names that cannot carry a token.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Sandbox, wait_for_file};

/// Every place a token might be typed by mistake: each is refused with the subcommand's usage
/// code, in one line that never quotes the token, and nothing reaches the trail.
#[test]
fn a_token_typed_in_the_wrong_place_is_never_echoed_or_logged() {
    let sandbox = Sandbox::new();
    let token = sandbox.issue("read:x");
    let t = token.as_str();
    let bin_t = format!("/bin/{t}");
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["revoke", t], 2),
        (vec!["suggest", t], 2),
        (vec!["log", "--id", t], 2),
        (vec!["verify", t], 2),
        (vec!["verify", "read:x", "--token-env", t], 2),
        (vec!["status", "--token-env", t], 2),
        (vec!["list", t], 2),
        (vec!["issue", "--scope", t], 2),
        (vec!["issue", "--profile", t], 2),
        (vec!["run", "--scope", t, "--", "true"], 125),
        (vec!["run", "--scope", "a", "--env", t, "--", "true"], 125),
        (vec!["run", "--scope", "a", "--ttl", t, "--", "true"], 125),
        (vec!["run", "--scope", "a", "--scrub", t, "--", "true"], 125),
        (
            vec!["run", "--scope", "a", "--receipt", t, "--", "true"],
            125,
        ),
        (vec!["run", "--scope", "a", "--", t], 125),
        (vec!["run", "--scope", "a", "--", &bin_t], 125),
        (vec!["--state-dir", t, "list"], 2),
        (
            vec!["--config", t, "run", "--scope", "a", "--", "true"],
            125,
        ),
        (vec!["man", "--dir", t], 2),
        (
            vec![
                "run",
                "--scope",
                "a",
                "--clean-env",
                "--keep",
                t,
                "--",
                "true",
            ],
            125,
        ),
    ];
    for (args, code) in cases {
        let out = sandbox.lease(&args).run();
        assert_eq!(out.code(), Some(code), "{args:?}: {out:#?}");
        assert!(
            !out.stderr.contains(t) && !out.stdout.contains(t),
            "{args:?} echoed the token: {out:#?}"
        );
        let out = out.one_error_line();
        if args[0] != "list" && !args.contains(&"--ttl") {
            assert!(
                out.stderr.contains("that is a token, not "),
                "{args:?}: {out:#?}"
            );
        }
    }
    // The two most likely slips, pinned whole.
    sandbox.lease(["revoke", t]).run().code_is(2).stderr_is(
        "lease: that is a token, not a lease id: pass the 12-digit id shown by `lease list --all`, or use `lease revoke --self` to end the lease of a token\n",
    );
    sandbox.lease(["verify", t]).run().code_is(2).stderr_is(
        "lease: that is a token, not an action: the token goes in $LEASE_TOKEN, --token-env NAME or --token-stdin; ACTION is what to check, e.g. write:draft\n",
    );
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).unwrap();
    assert!(!trail.contains(t), "the token is in audit.jsonl");
    let log = sandbox.lease(["log", "--json"]).run().success();
    assert!(!log.stdout.contains(t));
    // Only the issue made it into the trail: nothing was decided or revoked.
    assert_eq!(log.stdout.lines().count(), 1, "{}", log.stdout);
}

/// A path is refused only for holding a whole token (its checksum holds), not for holding
/// text shaped like one: a program, a receipt, a state dir or a config in a directory named
/// `agt_workspace` is an ordinary path.
#[test]
fn a_path_that_only_looks_like_it_holds_a_token_is_an_ordinary_path() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path("agt_workspace");
    fs::create_dir(&dir).unwrap();
    let program = dir.join("agt_checkout_tool");
    fs::write(&program, "#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let receipt = dir.join("agt_receipt_file.json");
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "a",
            "--receipt",
            receipt.to_str().unwrap(),
            "--",
        ])
        .arg(&program)
        .run()
        .success();
    assert_eq!(out.stdout, "ran\n", "{out:?}");
    assert!(receipt.is_file());
    if crate::harness::local_only("a state dir and a config are the broker's own") {
        return;
    }
    let config = dir.join("agt_config_file.toml");
    fs::write(&config, "").unwrap();
    let state = sandbox.path("agt_state_directory");
    sandbox
        .lease([
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .args(["run", "--scope", "a", "--", "true"])
        .run()
        .success();
}

/// A run whose token is in another variable (`--env GH_TOKEN`) is still the parent of runs
/// nested in it: they find its token through LEASE_TOKEN_ENV, narrow it, and never see it.
#[test]
fn a_token_under_another_name_still_parents_nested_runs_and_stays_behind() {
    let sandbox = Sandbox::new();
    let inner = r#"
        echo "inner-env-token=${GH_TOKEN:-none}"
        env | grep -c '=agt_' | sed 's/^/inner-tokens=/'
        lease status --json | sed 's/^/inner-status=/'
    "#;
    let outer = format!(
        r#"
        echo "outer-id=$LEASE_ID"
        echo "outer-token-env=$LEASE_TOKEN_ENV"
        lease verify read:x && echo outer-verify=granted
        lease run --scope '*' -- true 2>/dev/null; echo "widen=$?"
        lease run --print-env --scope read:x > printed
        grep -c "$GH_TOKEN" printed | sed 's/^/printed-token=/'
        lease run --scope read:x -- sh -c '{}'
        lease issue --scope read:x --json | sed 's/^/issued=/'
        "#,
        inner.replace('\'', r"'\''")
    );
    let out = sandbox
        .lease([
            "run", "--scope", "read:*", "--env", "GH_TOKEN", "--", "sh", "-c",
        ])
        .arg(&outer)
        .run()
        .success();
    let value = |key: &str| -> String {
        let prefix = format!("{key}=");
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key} in {out:#?}"))
            .to_owned()
    };
    let outer_id = value("outer-id");
    assert_eq!(value("outer-token-env"), "GH_TOKEN");
    assert_eq!(value("outer-verify"), "granted");
    assert_eq!(
        value("widen"),
        "125",
        "a nested run cannot widen its parent"
    );
    assert_eq!(
        value("printed-token"),
        "0",
        "--print-env showed the parent's token"
    );
    assert_eq!(
        value("inner-env-token"),
        "none",
        "the parent's GH_TOKEN reached the child"
    );
    assert_eq!(
        value("inner-tokens"),
        "1",
        "the nested command has one token, its own"
    );
    let status: serde_json::Value = serde_json::from_str(&value("inner-status")).unwrap();
    assert_eq!(status["parent"], outer_id.as_str(), "{status}");
    let issued: serde_json::Value = serde_json::from_str(&value("issued")).unwrap();
    let listed = sandbox.listed(&issued["id"]);
    assert_eq!(listed["parent"], outer_id.as_str(), "{listed}");
}

/// An empty directory of `sandbox` in which a plain shell killed by SIGABRT leaves a core file
/// (checked, then removed): where a test can see that a process leaves none. `None` (a skip)
/// where this machine writes core files elsewhere or not at all.
fn where_cores_are_written(sandbox: &Sandbox) -> Option<std::path::PathBuf> {
    let pattern = fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if pattern.trim() != "core" {
        crate::harness::skip(
            "core-files",
            &format!(
                "core_pattern is {:?}, not \"core\": core files cannot be looked for here",
                pattern.trim()
            ),
        );
        return None;
    }
    let dir = sandbox.path("work");
    fs::create_dir(&dir).unwrap();
    let control = sandbox
        .sh("ulimit -c unlimited; sh -c 'kill -ABRT $$'; ls")
        .command_dir(&dir)
        .run();
    if cores(&control.stdout) == 0 {
        crate::harness::skip(
            "core-files",
            "this machine writes no core files even for a plain shell",
        );
        return None;
    }
    for entry in fs::read_dir(&dir).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    Some(dir)
}

/// How many core files a listing (`ls`) names.
fn cores(listing: &str) -> usize {
    listing.lines().filter(|l| l.starts_with("core")).count()
}

/// lease holds its token in memory for the whole run: it must not dump core.
#[test]
fn a_run_killed_by_a_core_dumping_signal_leaves_no_core_file() {
    let sandbox = Sandbox::new();
    let Some(dir) = where_cores_are_written(&sandbox) else {
        return;
    };
    let out = sandbox
        .sh(r#"ulimit -c unlimited; lease run --scope a -- sh -c 'kill -ABRT $PPID; sleep 5'; echo "status=$?"; ls"#)
        .command_dir(&dir)
        .run()
        .success();
    assert!(out.stdout.contains("status=134"), "{out:#?}");
    assert_eq!(cores(&out.stdout), 0, "lease dumped core: {out:#?}");
}

/// The broker holds tokens and the upstreams' keys: killed by a core-dumping signal, it leaves
/// no core file either (it makes itself non-dumpable, as lease does).
#[test]
fn a_broker_killed_by_a_core_dumping_signal_leaves_no_core_file() {
    let sandbox = Sandbox::new();
    let Some(dir) = where_cores_are_written(&sandbox) else {
        return;
    };
    let out = sandbox
        .sh(r#"ulimit -c unlimited
env -u LEASE_BROKER lease serve --listen "unix:$PWD/b.sock" 2>serve.log &
broker=$!
for _ in $(seq 200); do grep -q "listening on" serve.log && break; sleep 0.05; done
grep -q "listening on" serve.log || { echo "no broker"; exit 1; }
kill -ABRT "$broker"
wait "$broker"
echo "status=$?"
ls"#)
        .command_dir(&dir)
        .run()
        .success();
    assert!(out.stdout.contains("status=134"), "{out:#?}");
    assert_eq!(cores(&out.stdout), 0, "the broker dumped core: {out:#?}");
}

/// `--print-env` prints and exits: no store is created, nothing is minted, the command does not
/// run.
#[test]
fn print_env_with_a_command_runs_nothing_and_creates_no_store() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease([
            "run",
            "--print-env",
            "--scope",
            "read:x",
            "--",
            "touch",
            "ran",
        ])
        .run()
        .success();
    assert!(
        out.stdout
            .lines()
            .any(|l| l == "LEASE_TOKEN=<token: minted when the command starts>"),
        "{out:#?}"
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l == "LEASE_TOKEN_ENV=LEASE_TOKEN")
    );
    assert!(!sandbox.path("ran").exists(), "the command ran");
    if crate::harness::broker_mode() {
        // The sandbox's broker made its store at start: nothing is in it.
        assert!(sandbox.records().is_empty(), "a lease was minted");
    } else {
        assert!(!sandbox.state_dir().exists(), "the store was created");
    }
    // What only a run can do is refused beside --print-env, not silently ignored.
    for (flag, shown) in [
        ("--mask", "--mask"),
        ("--receipt=r.json", "--receipt <FILE>"),
        ("--on-expiry=term", "--on-expiry <keep|term|kill>"),
        ("--grace=5", "--grace <DURATION>"),
    ] {
        let out = sandbox
            .lease(["run", "--print-env", flag, "--scope", "a"])
            .run()
            .code_is(125);
        assert_eq!(
            out.stderr,
            format!(
                "lease: the argument '--print-env' cannot be used with '{shown}'; see 'lease run --help'\n"
            ),
            "{out:#?}"
        );
    }
}

/// Names lease sets, PATH and the loader's variables cannot carry the token, from the command
/// line or from the config.
#[test]
fn env_names_that_would_break_the_run_are_refused() {
    let sandbox = Sandbox::new();
    for (name, why) in [
        ("LEASE_ID", "lease sets the LEASE_* variables itself"),
        ("LEASE_TOKEN_ENV", "lease sets the LEASE_* variables itself"),
        ("PATH", "PATH is where commands are looked up"),
        (
            "LD_PRELOAD",
            "the dynamic loader reads LD_* and DYLD_* variables",
        ),
        (
            "DYLD_INSERT_LIBRARIES",
            "the dynamic loader reads LD_* and DYLD_* variables",
        ),
        (
            "HOME",
            "programs read it as a path and quote it in their errors",
        ),
        (
            "TMPDIR",
            "programs read it as a path and quote it in their errors",
        ),
        (
            "BASH_ENV",
            "shells read it as how to run, or as a file to run first",
        ),
        (
            "IFS",
            "shells read it as how to run, or as a file to run first",
        ),
        (
            "LC_ALL",
            "programs read it as a setting and quote it in their errors",
        ),
        (
            "NODE_OPTIONS",
            "programs run it, or take it as their options",
        ),
    ] {
        let out = sandbox
            .lease(["run", "--scope", "a", "--env", name, "--", "touch", "ran"])
            .run()
            .code_is(125)
            .one_error_line();
        let expected =
            format!("{name} cannot carry the token: {why}; choose another name, e.g. DEPLOY_TOKEN");
        assert!(out.stderr.contains(&expected), "{out:#?}");
        assert!(!sandbox.path("ran").exists());
    }
    sandbox.write_config("[profile.deploy]\nscope = [\"a\"]\nenv = \"LD_PRELOAD\"\n");
    sandbox
        .lease(["run", "--profile", "deploy", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("LD_PRELOAD cannot carry the token");
    sandbox.write_config("token_env = \"PATH\"\n");
    sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("PATH cannot carry the token");
    assert!(sandbox.records().is_empty());
}

/// Polls `verify` until it denies `token`, failing if that takes longer than `within`; returns
/// the reason.
fn denied_within(sandbox: &Sandbox, token: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let out = sandbox
            .lease(["verify", "read:x", "--json"])
            .env("LEASE_TOKEN", token)
            .run();
        if out.code() == Some(1) {
            return out.json()["reason"].as_str().unwrap().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the token of a finished command was still granted after {within:?}: {out:#?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// The command's leftover holds its record's lock, so lease cannot write the revocation: the
/// token is denied within a second of the command's exit anyway (its record names the command,
/// which is gone), lease gives up on the lock in bounded time, a SIGTERM while it finishes ends
/// it at once, and `revoke --all` does not hang either.
#[test]
fn a_token_dies_with_its_command_even_while_a_leftover_holds_its_lock() {
    if crate::harness::local_only("it locks a local record") {
        return;
    }
    let _machine = crate::harness::timing();
    let sandbox = Sandbox::new();
    let script = r#"printf %s "$LEASE_TOKEN" > token
        setsid flock -s "$LEASE_STATE_DIR/leases/$LEASE_ID.toml" sh -c 'echo $$ > holder; exec sleep 60' </dev/null >/dev/null 2>&1 &
        while ! [ -s holder ]; do sleep 0.01; done
        exit 0"#;
    let mut run = sandbox.run_sh("read:x", script).start();
    let holder: i32 = wait_for_file(&sandbox.path("holder"))
        .trim()
        .parse()
        .unwrap();
    let token = wait_for_file(&sandbox.path("token"));
    let reason = denied_within(&sandbox, &token, Duration::from_secs(1));
    assert_eq!(reason, "owner gone");
    // lease is stuck on the lock: a SIGTERM now ends it at once.
    run.signal(nix::sys::signal::Signal::SIGTERM);
    let ended = Instant::now();
    let status = run.wait();
    assert!(
        ended.elapsed() < Duration::from_millis(500),
        "{:?}",
        ended.elapsed()
    );
    assert_eq!(status.code(), Some(143), "{status:?}");
    let started = Instant::now();
    sandbox.lease(["revoke", "--all"]).run();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "revoke --all hung"
    );
    crate::harness::kill_pid(holder);
    assert_eq!(
        denied_within(&sandbox, &token, Duration::ZERO),
        "owner gone"
    );
}

/// The command stops lease (`kill -STOP $PPID`) and exits: the token is denied at once; when
/// lease is continued it revokes as usual and exits with the command's status.
#[test]
fn a_token_dies_with_its_command_even_while_lease_is_stopped() {
    if crate::harness::local_only(
        "through a broker a stopped wrapper is a silent connection, ended after owner_timeout: broker::a_silent_run_loses_its_lease_after_owner_timeout",
    ) {
        return;
    }
    let _machine = crate::harness::timing();
    let sandbox = Sandbox::new();
    let script = r#"printf %s "$LEASE_TOKEN" > token; kill -STOP $PPID; exit 3"#;
    let mut run = sandbox.run_sh("read:x", script).start();
    let token = wait_for_file(&sandbox.path("token"));
    assert_eq!(
        denied_within(&sandbox, &token, Duration::from_secs(1)),
        "owner gone"
    );
    run.signal(nix::sys::signal::Signal::SIGCONT);
    assert_eq!(run.wait().code(), Some(3));
    assert_eq!(denied_within(&sandbox, &token, Duration::ZERO), "revoked");
}

/// A symlink, a FIFO and a directory planted as records stop neither `revoke --all` nor `gc`:
/// each is skipped with one warning, every good lease is still revoked or collected, and the
/// exit status (2) says some entries were bad.
/// A token `lease issue` cannot hand over (its reader gone, a full disk) would leave a lease
/// nobody holds alive until its expiry: it is revoked, and that is an error (exit 2).
#[test]
fn a_token_issue_cannot_print_is_revoked_and_fails() {
    let sandbox = Sandbox::new();
    let reader_gone = || {
        // A pipe whose reading end is closed before lease starts: its write fails for sure.
        let (read, write) = nix::unistd::pipe().expect("pipe");
        drop(read);
        std::process::Stdio::from(write)
    };
    let full = || std::process::Stdio::from(fs::File::create("/dev/full").expect("/dev/full"));
    for (what, stdout, json) in [
        ("a closed pipe", reader_gone(), false),
        ("a full disk", full(), false),
        ("a full disk, --json", full(), true),
    ] {
        let mut cmd = sandbox.lease(["issue", "--scope", "read:x"]);
        if json {
            cmd = cmd.arg("--json");
        }
        let mut command = cmd.command;
        command.stdout(stdout).stderr(std::process::Stdio::piped());
        let out = command.output().expect("lease issue");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
        assert!(
            stderr.starts_with("lease: cannot hand over the token: writing to standard output: "),
            "{what}: {stderr}"
        );
        assert!(
            stderr
                .trim_end()
                .ends_with("was revoked, so that none is left that nobody holds"),
            "{what}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
        let listed = sandbox.lease(["list", "--json"]).run().success();
        assert_eq!(listed.stdout.trim(), "[]", "{what}: a live lease is left");
    }
}

/// Help and the version, asked for with stdout on a full disk: one line saying so, exit 2
/// (the standard library's `print!` panicked, and lease called that an internal error).
#[test]
fn help_that_cannot_be_written_is_one_line_not_an_internal_error() {
    let sandbox = Sandbox::new();
    for args in [
        &["--help"][..],
        &["-V"],
        &["run", "--help"],
        &["help", "verify"],
    ] {
        let mut command = sandbox.lease(args).command;
        command
            .stdout(std::process::Stdio::from(
                fs::File::create("/dev/full").expect("/dev/full"),
            ))
            .stderr(std::process::Stdio::piped());
        let out = command.output().expect("lease");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(
            stderr, "lease: writing to standard output: No space left on device (os error 28)\n",
            "{args:?}"
        );
    }
}

/// `lease revoke A BAD B`: the entry that cannot be revoked is said, and keeps neither A nor B
/// alive; an unknown id among them is said too.
#[test]
fn revoke_of_several_ids_revokes_every_good_one_past_a_bad_one() {
    if crate::harness::files_only("writes an unreadable record file by hand") {
        return;
    }
    let sandbox = Sandbox::new();
    let issue = || {
        sandbox.issue_json("read:x", &[])["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (first, second) = (issue(), issue());
    let bad = sandbox.leases_dir().join("aaaaaaaaaaaa.toml");
    fs::write(&bad, "not a record").unwrap();
    fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = sandbox
        .lease(["revoke", &first, "aaaaaaaaaaaa", "bbbbbbbbbbbb", &second])
        .run()
        .code_is(2);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{out:#?}");
    assert!(
        lines[0].starts_with("lease: warning: skipping the store entry for lease aaaaaaaaaaaa: "),
        "{out:#?}"
    );
    assert_eq!(
        lines[1],
        "lease: unknown lease id: bbbbbbbbbbbb: see 'lease list --all' for the ids on record"
    );
    assert_eq!(
        lines[2],
        "lease: 1 store entry could not be revoked (see the warning above); every other lease was revoked"
    );
    for id in [&first, &second] {
        let text = fs::read_to_string(sandbox.leases_dir().join(format!("{id}.toml"))).unwrap();
        let state = text.parse::<toml::Table>().unwrap()["state"].clone();
        assert_eq!(state.as_str(), Some("revoked"), "{id}");
    }
}

#[test]
fn bad_store_entries_are_skipped_by_revoke_all_and_gc() {
    if crate::harness::files_only("writes unreadable record files by hand") {
        return;
    }
    let sandbox = Sandbox::new();
    let ids: Vec<String> = (0..3)
        .map(|_| {
            let issued = sandbox.issue_json("read:x", &["--ttl", "1"]);
            issued["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let leases = sandbox.leases_dir();
    std::os::unix::fs::symlink("/etc/passwd", leases.join("aaaaaaaaaaaa.toml")).unwrap();
    nix::unistd::mkfifo(
        &leases.join("bbbbbbbbbbbb.toml"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    fs::create_dir(leases.join("cccccccccccc.toml")).unwrap();

    let out = sandbox.lease(["revoke", "--all"]).run().code_is(2);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{out:#?}");
    for bad in ["aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc"] {
        let warned = format!("lease: warning: skipping the store entry for lease {bad}: ");
        assert!(
            lines.iter().any(|l| l.starts_with(&warned)),
            "{bad}: {out:#?}"
        );
    }
    assert_eq!(
        lines[3],
        "lease: 3 store entries could not be revoked (see the warnings above); every other lease was revoked"
    );
    let record = |id: &str| {
        let path = leases.join(format!("{id}.toml"));
        fs::read_to_string(path)
            .ok()
            .map(|t| t.parse::<toml::Table>().unwrap())
    };
    for id in &ids {
        let state = record(id).unwrap()["state"].clone();
        assert_eq!(state.as_str(), Some("revoked"), "{id}");
    }

    let last = sandbox.issue_json("read:x", &["--ttl", "1"]);
    sandbox
        .lease(["revoke", last["id"].as_str().unwrap()])
        .run()
        .success();
    crate::harness::wait_until_past(&last["expires_at"]);
    let out = sandbox.lease(["gc"]).run().code_is(2);
    // The FIFO is unreadable as a record, so gc removes it; the symlink and the directory stay.
    assert_eq!(out.stdout, "removed 5 leases\n", "{out:#?}");
    assert!(
        out.stderr
            .contains("skipping the store entry for lease aaaaaaaaaaaa")
    );
    assert!(
        out.stderr
            .contains("skipping the store entry for lease cccccccccccc")
    );
    for id in ids.iter().map(String::as_str).chain(last["id"].as_str()) {
        assert!(record(id).is_none(), "{id} was not collected");
    }
}

/// A token hidden in a variable's name, or in a value that is not UTF-8, stays behind too: the
/// command gets one token, its own, and `--print-env` shows none.
#[test]
fn a_token_in_a_variable_name_or_in_bytes_that_are_not_utf8_stays_behind() {
    use std::os::unix::ffi::OsStringExt;
    let sandbox = Sandbox::new();
    let token = sandbox.issue("read:x");
    let mut value = vec![0xff_u8];
    value.extend_from_slice(token.as_bytes());
    let value = std::ffi::OsString::from_vec(value);
    let named = format!("X_{token}");
    for (args, tokens) in [
        (vec!["run", "--scope", "a", "--print-env"], 0),
        (vec!["run", "--scope", "a", "--", "env"], 1),
    ] {
        let out = sandbox
            .lease(&args)
            .env(&named, "1")
            .env("BYTES", &value)
            .run()
            .success();
        assert!(!out.stdout.contains(&token), "{args:?}: {out:#?}");
        assert_eq!(out.stdout.matches("agt_").count(), tokens, "{out:#?}");
    }
}

/// A config file that is a FIFO or `/dev/zero` is refused at once, in one line; `/dev/null` is
/// an empty config.
#[test]
fn a_config_that_is_a_fifo_or_dev_zero_is_refused_without_hanging() {
    let sandbox = Sandbox::new();
    let fifo = sandbox.path("config.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for config in [fifo.to_str().unwrap(), "/dev/zero"] {
        let out = sandbox
            .lease(["--config", config, "list"])
            .run()
            .code_is(2)
            .one_error_line();
        assert_eq!(
            out.stderr,
            format!("lease: reading config {config}: it is not a regular file\n")
        );
    }
    sandbox
        .lease(["--config", "/dev/null", "list"])
        .run()
        .success();
}

/// The trail names a caller by its argv[0] only, even when that is empty or a rewritten title:
/// never one of its arguments, which may hold secrets.
#[test]
fn the_trail_never_takes_a_callers_argument_for_its_command() {
    let sandbox = Sandbox::new();
    let token = sandbox.issue("a");
    sandbox
        .command("bash")
        .arg("-c")
        .arg(r#"exec -a "" sh -c 'lease verify a; echo "$0" >/dev/null' secret-argument"#)
        .env("LEASE_TOKEN", &token)
        .run()
        .success();
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).unwrap();
    let granted = trail
        .lines()
        .find(|l| l.contains("\"event\":\"granted\""))
        .expect("a granted event");
    assert!(
        !granted.contains("secret-argument") && !granted.contains("\"-c\""),
        "{granted}"
    );
    assert!(granted.contains("\"command\":\"\""), "{granted}");
}
