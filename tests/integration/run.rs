//! `lease run`: the child's environment, exit statuses, and revocation on every path.

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{PATIENCE, Sandbox, death_signal, kill_pid};

#[test]
fn child_gets_the_six_variables() {
    if crate::harness::local_only("a run through a broker passes LEASE_BROKER, not a state dir") {
        return;
    }
    let sandbox = Sandbox::new();
    let before = SystemTime::now();
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "read:articles,write:draft",
            "--scope",
            "read:x",
            "--ttl",
            "300",
            "--",
        ])
        .arg("sh")
        .arg("-c")
        .arg("env | grep ^LEASE_")
        .run()
        .success();
    let vars: std::collections::BTreeMap<&str, &str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .collect();
    assert_eq!(vars.len(), 6, "{vars:?}");
    assert_eq!(vars["LEASE_TOKEN_ENV"], "LEASE_TOKEN");

    let token = vars["LEASE_TOKEN"];
    let body = token.strip_prefix("agt_").expect("agt_ prefix");
    assert!(
        body.len() >= 32,
        "at least 24 random bytes in base64: {token}"
    );
    assert!(
        body.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "base64url: {token}"
    );

    let id = vars["LEASE_ID"];
    assert!(
        id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(!token.contains(id), "the id is not a piece of the token");

    assert_eq!(vars["LEASE_SCOPE"], "read:articles,write:draft,read:x");
    assert_eq!(
        vars["LEASE_STATE_DIR"],
        sandbox.state_dir().to_str().unwrap()
    );

    let expires = humantime::parse_rfc3339(vars["LEASE_EXPIRES_AT"]).expect("RFC 3339 UTC");
    crate::harness::assert_expires_in(
        expires,
        Duration::from_secs(300),
        (before, SystemTime::now()),
    );
}

#[test]
fn env_flag_moves_the_token_and_drops_an_inherited_one() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["run", "--scope", "a", "--env", "GITHUB_TOKEN", "--"])
        .arg("sh")
        .arg("-c")
        .arg("echo \"gh=$GITHUB_TOKEN lt=${LEASE_TOKEN-unset}\"")
        .env("LEASE_TOKEN", "agt_inherited")
        .run()
        .success();
    assert!(out.stdout.starts_with("gh=agt_"), "{}", out.stdout);
    assert!(
        out.stdout.trim_end().ends_with("lt=unset"),
        "{}",
        out.stdout
    );
}

#[test]
fn relative_state_dir_is_passed_on_as_absolute() {
    if crate::harness::local_only("a run through a broker passes LEASE_BROKER, not a state dir") {
        return;
    }
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["run", "--scope", "a", "--"])
        .arg("sh")
        .arg("-c")
        .arg("echo $LEASE_STATE_DIR")
        .env("LEASE_STATE_DIR", "rel/state")
        .run()
        .success();
    assert_eq!(
        out.stdout.trim(),
        sandbox.path("rel/state").to_str().unwrap()
    );
}

/// The config chosen with `--config` (or `LEASE_CONFIG`), relative or not, is the one nested
/// runs follow, wherever the command moves to: the command gets it as an absolute
/// `LEASE_CONFIG`.
#[test]
fn a_chosen_config_is_passed_on_as_absolute_to_nested_runs() {
    if crate::harness::local_only("through a broker, the broker's config is the policy") {
        return;
    }
    let sandbox = Sandbox::new();
    std::fs::write(
        sandbox.path("chosen.toml"),
        "[profile.deploy]\nscope = [\"write:site\"]\n",
    )
    .unwrap();
    let nested =
        "cd / && echo \"$LEASE_CONFIG\" && lease run --profile deploy -- lease verify write:site";
    for how in ["flag", "env"] {
        let mut cmd = sandbox.lease(["run", "--profile", "deploy", "--", "sh", "-c", nested]);
        if how == "flag" {
            cmd = sandbox
                .lease([
                    "--config",
                    "chosen.toml",
                    "run",
                    "--profile",
                    "deploy",
                    "--",
                ])
                .args(["sh", "-c", nested]);
        } else {
            cmd = cmd.env("LEASE_CONFIG", "chosen.toml");
        }
        let out = cmd.run().success();
        assert_eq!(
            out.stdout.trim(),
            sandbox.path("chosen.toml").to_str().unwrap(),
            "{how}"
        );
    }
}

#[test]
fn exit_code_of_the_child_is_lease_exit_code() {
    let sandbox = Sandbox::new();
    for (runs, code) in [0, 1, 42, 255].into_iter().enumerate() {
        sandbox
            .run_sh("a", &format!("exit {code}"))
            .run()
            .code_is(code);
        // Whatever the code, the lease was revoked before lease exited.
        sandbox.assert_all_revoked(runs + 1);
    }
}

#[test]
fn child_killed_by_a_signal_kills_lease_with_the_same_signal() {
    let sandbox = Sandbox::new();
    for (name, number) in [("KILL", 9), ("TERM", 15), ("INT", 2)] {
        let out = sandbox.run_sh("a", &format!("kill -{name} $$")).run();
        assert_eq!(death_signal(out.status), Some(number), "{name}: {out:#?}");
        assert!(out.stderr.is_empty(), "{out:#?}");
    }
    // As the shell sees it: 128 + N.
    let out = sandbox
        .sh("lease run --scope a -- sh -c 'kill -TERM $$'; echo status=$?")
        .run()
        .success();
    assert_eq!(out.stdout.trim(), "status=143");
    // Every one of those leases was revoked.
    sandbox.assert_all_revoked(4);
}

#[test]
fn command_not_found_is_127_and_not_executable_is_126() {
    let sandbox = Sandbox::new();
    sandbox
        .lease(["run", "--scope", "a", "--", "no-such-command-anywhere"])
        .run()
        .code_is(127)
        .one_error_line()
        .stderr_has("command not found");
    let script = sandbox.path("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    sandbox
        .lease(["run", "--scope", "a", "--"])
        .arg(script.to_str().unwrap())
        .run()
        .code_is(126)
        .one_error_line()
        .stderr_has("permission denied");
    // A script whose interpreter is missing is there: 127 (as bash, env, tini), said so.
    let orphan = sandbox.path("orphan.sh");
    std::fs::write(&orphan, "#!/nonexistent/interpreter\necho hi\n").unwrap();
    std::fs::set_permissions(&orphan, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    sandbox
        .lease(["run", "--scope", "a", "--"])
        .arg(&orphan)
        .run()
        .code_is(127)
        .one_error_line()
        .stderr_has("it exists, but the interpreter its #! line names");
    // Any other reason exec gives is said in the system's words, as the rest are (no Rust
    // "(os error N)"): a script still open for writing is busy.
    let busy = sandbox.path("busy.sh");
    std::fs::write(&busy, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&busy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&busy)
        .unwrap();
    sandbox
        .lease(["run", "--scope", "a", "--"])
        .arg(&busy)
        .run()
        .code_is(126)
        .stderr_is(&format!(
            "lease: cannot run '{}': Text file busy\n",
            busy.display()
        ));
    drop(writer);
    sandbox.assert_all_revoked(4);
}

/// valgrind aborts a process that clones with shared memory but without a thread's other flags,
/// which is how lease starts a command on x86-64 Linux: under valgrind lease forks instead, and
/// the run is the same as anywhere else.
#[test]
fn a_run_under_valgrind_forks_its_command_and_revokes_its_lease() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        crate::harness::skip("no-valgrind", "valgrind is not installed");
        return;
    }
    let sandbox = Sandbox::new();
    let out = sandbox
        .command("valgrind")
        .args(["--tool=none", "-q", "--trace-children=no"])
        .arg(crate::harness::lease_bin())
        .args(["run", "--scope", "a:b", "--", "sh", "-c"])
        .arg("printf '%.4s\\n' \"$LEASE_TOKEN\"; exit 4")
        .run()
        .code_is(4);
    assert_eq!(out.stdout, "agt_\n");
    assert_eq!(out.stderr, "", "valgrind or lease complained");
    sandbox.assert_all_revoked(1);
}

/// Where `clone(CLONE_VM)` is refused (a seccomp policy answers EPERM; QEMU's user mode,
/// EINVAL), lease forks its command instead, and the run is the same as anywhere else. The
/// refusal is a real seccomp filter (tests/fixtures/deny_clone_vm.py), and strace shows that
/// lease met it.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_run_whose_shared_memory_clone_is_refused_forks_its_command_and_revokes_its_lease() {
    if Command::new("strace").arg("-V").output().is_err() {
        crate::harness::skip("no-strace", "strace is not installed");
        return;
    }
    let sandbox = Sandbox::new();
    for denied in ["EPERM", "EINVAL"] {
        let log = sandbox.path(&format!("clone-{denied}.log"));
        let out = sandbox
            .command("python3")
            .arg(crate::harness::fixture("deny_clone_vm.py"))
            .arg(denied)
            .args(["strace", "-f", "-qq", "-e", "trace=clone", "-o"])
            .arg(&log)
            .arg(crate::harness::lease_bin())
            .args(["run", "--scope", "a:b", "--", "sh", "-c"])
            .arg("printf '%.4s\\n' \"$LEASE_TOKEN\"; exit 4")
            .run()
            .code_is(4);
        assert_eq!(out.stdout, "agt_\n", "{denied}");
        assert_eq!(out.stderr, "", "{denied}");
        let trace = std::fs::read_to_string(&log).expect("strace's log");
        assert!(
            trace
                .lines()
                .any(|line| line.contains("CLONE_VM") && line.contains(&format!("= -1 {denied}"))),
            "{denied}: lease's clone with CLONE_VM was not refused:\n{trace}"
        );
    }
    sandbox.assert_all_revoked(2);
}

#[test]
fn every_bad_argument_is_125_with_one_line_and_no_lease() {
    let sandbox = Sandbox::new();
    let cases: &[&[&str]] = &[
        &["run", "--", "true"],
        &["run", "--scope", "a"],
        &["run", "--scope", "a", "true"],
        &["run", "--scope", "", "--", "true"],
        &["run", "--scope", "a,,b", "--", "true"],
        &["run", "--scope", "a b", "--", "true"],
        &["run", "--scope", "read:*x", "--", "true"],
        &["run", "--scope", "a;rm", "--", "true"],
        &["run", "--scope", &"x".repeat(129), "--", "true"],
        &["run", "--scope", "a", "--ttl", "0", "--", "true"],
        &["run", "--scope", "a", "--ttl", "-5", "--", "true"],
        &["run", "--scope", "a", "--ttl", "soon", "--", "true"],
        &["run", "--scope", "a", "--ttl", "1.5s", "--", "true"],
        &["run", "--scope", "a", "--ttl", "25h", "--", "true"],
        &["run", "--scope", "a", "--uses", "0", "--", "true"],
        &["run", "--scope", "a", "--uses", "+1", "--", "true"],
        &["run", "--scope", "a=+1", "--", "true"],
        &["run", "--scope", "a", "--env", "1BAD", "--", "true"],
        &["run", "--scope", "a", "--env", "", "--", "true"],
        &["run", "--scope", "a", "--bogus", "--", "true"],
        &["run", "--scope", "a", "--ttl", "--", "true"],
        &["run", "--state-dir", "--scope", "a", "--", "true"],
    ];
    for args in cases {
        let out = sandbox.lease(*args).run();
        assert_eq!(out.code(), Some(125), "{args:?}: {out:#?}");
        let out = out.one_error_line();
        assert!(!out.stderr.contains("panicked"), "{out:#?}");
    }
    assert!(
        sandbox.records().is_empty(),
        "a bad argument left a lease behind"
    );
}

#[test]
fn missing_separator_error_says_how_to_fix_it() {
    Sandbox::new()
        .lease(["run", "--scope", "a", "echo", "hi"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("put `--` before the command");
}

#[test]
fn lease_returns_when_the_child_exits_even_if_a_grandchild_lives_on() {
    let sandbox = Sandbox::new();
    let started = Instant::now();
    let out = sandbox
        .run_sh("a", "sleep 60 >/dev/null 2>&1 & echo $!")
        .run()
        .success();
    assert!(
        started.elapsed() < PATIENCE / 2,
        "took {:?}",
        started.elapsed()
    );
    let grandchild: i32 = out.stdout.trim().parse().unwrap();
    assert!(
        std::path::Path::new(&format!("/proc/{grandchild}")).exists(),
        "grandchild still runs"
    );
    kill_pid(grandchild);
    sandbox.assert_all_revoked(1);
}

#[test]
fn child_keeps_stdin() {
    let out = Sandbox::new()
        .lease(["run", "--scope", "a", "--", "cat"])
        .stdin("piped through\n")
        .run()
        .success();
    assert_eq!(out.stdout, "piped through\n");
}

#[test]
fn token_is_revoked_after_the_run() {
    let sandbox = Sandbox::new();
    let out = sandbox.run_sh("a", "echo $LEASE_TOKEN").run().success();
    let token = out.stdout.trim();
    sandbox
        .verify(token, "a")
        .code_is(1)
        .one_error_line()
        .stderr_has("revoked");
}

#[test]
fn a_failed_revocation_is_reported_and_fails_a_successful_run() {
    if crate::harness::local_only("it breaks the local store under the run") {
        return;
    }
    let sandbox = Sandbox::new();
    // A leftover of the child holds the record's lock for longer than lease waits for it (2 s),
    // so the record can no longer be updated, until the test ends it. (Moving the lease dir
    // away no longer sabotages anything: lease works through the handle it opened.)
    let sabotage = "setsid flock -s \"$LEASE_STATE_DIR/leases/$LEASE_ID.toml\" sh -c 'echo $$ > holder.tmp; mv holder.tmp holder; exec sleep 60' </dev/null >/dev/null 2>&1 &
        while ! [ -e holder ]; do sleep 0.01; done";
    let end_holder = || {
        let holder = std::fs::read_to_string(sandbox.path("holder")).expect("the holder's pid");
        kill_pid(holder.trim().parse().expect("a pid"));
        std::fs::remove_file(sandbox.path("holder")).expect("remove the pid file");
    };
    sandbox
        .run_sh("a", sabotage)
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("could not be revoked");
    end_holder();
    // When the command itself failed, its status wins, and the failure is still reported.
    sandbox
        .run_sh("a", &format!("{sabotage}; exit 3"))
        .run()
        .code_is(3)
        .one_error_line()
        .stderr_has("could not be revoked");
    end_holder();
}

/// A command that replaces its own record (with a FIFO, a directory, an empty file) leaves
/// nothing lease can revoke: the run says so and fails, rather than ending as if all were well.
#[test]
fn a_record_replaced_by_its_command_is_a_failed_revocation() {
    if crate::harness::local_only("it replaces the local store's record") {
        return;
    }
    let sandbox = Sandbox::new();
    for replace in [
        "mkfifo -m600 \"$f\"",
        "mkdir -m700 \"$f\"",
        "(umask 077; : > \"$f\")",
    ] {
        let script = format!("f=$LEASE_STATE_DIR/leases/$LEASE_ID.toml; rm \"$f\"; {replace}");
        let out = sandbox
            .run_sh("a", &script)
            .run()
            .code_is(125)
            .one_error_line();
        assert!(
            out.stderr.contains("could not be revoked"),
            "{replace}: {out:?}"
        );
    }
}

#[test]
fn a_panic_after_minting_still_revokes_the_lease() {
    if crate::harness::local_only("it uses the local run's debug panic hook") {
        return;
    }
    // Debug builds of lease panic on purpose when this variable is set (release builds do not
    // contain the hook): the guard revokes while unwinding, and the exit is 125.
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .env("LEASE_DEBUG_PANIC_AFTER_MINT", "1")
        .run()
        .code_is(125)
        .one_error_line();
    assert!(
        out.stderr.starts_with("lease: internal error at "),
        "{out:#?}"
    );
    assert!(!out.stderr.contains("agt_"), "{out:#?}");
    sandbox.assert_all_revoked(1);
}

#[test]
fn lease_dies_of_the_childs_signal_with_core_dumps_off() {
    // The child may dump core; lease, re-raising its signal, must not dump a second one.
    use std::os::unix::process::ExitStatusExt;
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if pattern.starts_with('|') {
        // A core handler program receives dumps whatever RLIMIT_CORE says.
        crate::harness::skip("core-pipe", "core dumps go to a handler program here");
        return;
    }
    let sandbox = Sandbox::new();
    for (signal, number) in [("QUIT", 3), ("SEGV", 11), ("ABRT", 6)] {
        let out = sandbox
            .sh(&format!(
                "ulimit -c unlimited && exec lease run --scope a -- sh -c 'kill -{signal} $$'"
            ))
            .run();
        assert_eq!(death_signal(out.status), Some(number), "{out:#?}");
        assert!(!out.status.core_dumped(), "lease dumped core: {out:#?}");
    }
    sandbox.assert_all_revoked(3);
}

#[test]
fn lease_dies_of_every_signal_that_can_kill_its_child() {
    // Beyond the classic ones: SIGSTKFLT, SIGPWR and the real-time signals end a process by
    // default too; lease must not turn one into 128 + N.
    let sandbox = Sandbox::new();
    for signal in [16, 30, 34, 40, 64] {
        let out = sandbox
            .lease(["run", "--scope", "a", "--", "sh", "-c"])
            .arg(format!("kill -{signal} $$"))
            .run();
        assert_eq!(death_signal(out.status), Some(signal), "{out:#?}");
    }
    sandbox.assert_all_revoked(5);
}

#[test]
fn renewing_a_nested_lease_never_takes_it_past_its_parents_expiry() {
    let sandbox = Sandbox::new();
    sandbox.write_config("max_ttl = 1000\n");
    let out = sandbox
        .lease(["run", "--scope", "a", "--ttl", "60", "--", "sh", "-c"])
        .arg("echo $LEASE_EXPIRES_AT; lease run --scope a --ttl 30 -- lease renew --ttl 500")
        .run()
        .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:#?}");
    assert_eq!(
        lines[1], lines[0],
        "capped at the parent's expiry: {out:#?}"
    );
    assert!(out.stderr.contains("extended only to"), "{out:#?}");
}
