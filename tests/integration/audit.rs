//! The audit trail and `lease log`: every event with its fields and never the token, whole
//! lines from concurrent runs, rotation, a FIFO or symlink planted as the log, and the filters.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::{Sandbox, kill_pid, wait_until_past};

fn events(sandbox: &Sandbox) -> Vec<serde_json::Value> {
    sandbox.trail()
}

fn of_kind<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

#[test]
fn every_event_type_is_logged_with_its_fields_and_never_the_token() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["run", "--scope", "a,b", "--", "sh", "-c"])
        .arg("echo $LEASE_TOKEN; lease verify a; lease verify c 2>/dev/null; lease renew --ttl 60 >/dev/null; exit 3")
        .arg("SECRET-ARGUMENT")
        .run()
        .code_is(3);
    let run_token = out.stdout.trim().to_owned();
    let expiring = sandbox.issue_json("e", &["--ttl", "1"]);
    let mut killed = sandbox.run_sh("k", "echo $$; exec sleep 60").start();
    let child: i32 = killed.lines.expect("").trim().parse().unwrap();
    killed.signal(Signal::SIGKILL);
    killed.wait();
    kill_pid(child);
    wait_until_past(&expiring["expires_at"]);
    sandbox
        .verify(expiring["token"].as_str().unwrap(), "e")
        .code_is(1);
    sandbox.lease(["gc"]).run().success();

    let events = events(&sandbox);
    for kind in [
        "issued",
        "granted",
        "denied",
        "revoked",
        "expired",
        "owner_gone",
        "child_exit",
        "renewed",
    ] {
        assert!(
            !of_kind(&events, kind).is_empty(),
            "no {kind} event in {events:#?}"
        );
    }
    for event in &events {
        for key in [
            "time", "event", "lease", "parent", "run", "pid", "command", "argc",
        ] {
            assert!(event.get(key).is_some(), "{key} missing from {event}");
        }
        assert!(humantime::parse_rfc3339(event["time"].as_str().unwrap()).is_ok());
    }
    let issued = of_kind(&events, "issued")[0];
    assert_eq!(issued["scope"], serde_json::json!(["a", "b"]));
    assert_eq!(issued["command"], "sh");
    assert_eq!(issued["argc"], 3, "argv[0] and a count, not the arguments");
    assert_eq!(
        issued["run"], issued["lease"],
        "a run's own lease names the run"
    );
    let granted = of_kind(&events, "granted")[0];
    assert_eq!(
        (granted["action"].as_str(), granted["reason"].as_str()),
        (Some("a"), Some("granted"))
    );
    assert_eq!(granted["run"], issued["lease"]);
    // Who asked: the caller of `lease verify` (the run's shell), locally and through a broker
    // on its unix socket alike.
    assert_eq!(granted["command"], "sh", "{granted}");
    assert!(granted["pid"].as_u64().is_some(), "{granted}");
    let denied = of_kind(&events, "denied");
    assert!(
        denied
            .iter()
            .any(|d| d["action"] == "c" && d["reason"] == "out of scope"),
        "{denied:?}"
    );
    let exit = of_kind(&events, "child_exit")[0];
    assert_eq!(exit["exit_code"], 3);
    assert_eq!(
        (&exit["command"], &exit["argc"]),
        (&issued["command"], &issued["argc"])
    );
    assert_eq!(exit["pid"], issued["pid"]);
    assert!(exit["duration_ms"].as_u64().is_some());
    assert!(of_kind(&events, "renewed")[0]["expires_at"].is_string());
    assert!(of_kind(&events, "revoked")[0]["reason"].is_string());

    let log = std::fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).unwrap();
    for secret in [
        &run_token[4..],
        &expiring["token"].as_str().unwrap()[4..],
        "SECRET-ARGUMENT",
    ] {
        assert!(!log.contains(secret), "{secret} is in the audit log");
    }
    let mode = std::fs::metadata(sandbox.state_dir().join("audit.jsonl"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A trail someone made readable by others is made private again before the next event.
#[test]
fn a_trail_open_to_others_is_made_private_again() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    sandbox.issue("a:b");
    let trail = sandbox.state_dir().join("audit.jsonl");
    std::fs::set_permissions(&trail, std::fs::Permissions::from_mode(0o644)).unwrap();
    sandbox.issue("a:b");
    let mode = std::fs::metadata(&trail).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_hundred_concurrent_runs_write_only_whole_lines() {
    let sandbox = Sandbox::new();
    let mut runs: Vec<_> = (0..100)
        .map(|i| {
            let mut cmd = sandbox.lease([
                "run",
                "--scope",
                &format!("s:{i}"),
                "--",
                "lease",
                "verify",
                &format!("s:{i}"),
            ]);
            cmd.command
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            cmd.command.spawn().unwrap()
        })
        .collect();
    for run in &mut runs {
        assert!(crate::harness::wait_for_exit(run).success());
    }
    let events = events(&sandbox);
    for kind in ["issued", "granted", "child_exit", "revoked"] {
        assert_eq!(of_kind(&events, kind).len(), 100, "{kind}");
    }
}

#[test]
fn the_log_rotates_past_audit_max_bytes_keeping_one_old_file() {
    let sandbox = Sandbox::new();
    sandbox.write_config("audit_max_bytes = 4096\n");
    let token = sandbox.issue("a");
    for _ in 0..60 {
        sandbox.verify(&token, "a").success();
    }
    let current = std::fs::metadata(sandbox.state_dir().join("audit.jsonl"))
        .unwrap()
        .len();
    let rotated = std::fs::metadata(sandbox.state_dir().join("audit.jsonl.1"))
        .unwrap()
        .len();
    assert!(current <= 4096 && rotated <= 4096, "{current} {rotated}");
    let names: Vec<String> = std::fs::read_dir(sandbox.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("audit")).count(),
        2,
        "{names:?}"
    );
    let shown = sandbox.lease(["log", "--json"]).run().success().stdout;
    let lines: Vec<serde_json::Value> = shown
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.len() > 10
            && lines
                .iter()
                .all(|e| e["event"] == "granted" || e["event"] == "issued")
    );
}

/// What is planted as `audit.jsonl` in the audit-log tests.
enum Planted {
    Fifo,
    /// A FIFO that a reader (this test) holds open, so that opening it never fails.
    FifoWithReader,
    SymlinkToDevZero,
}

#[test]
fn an_audit_log_that_is_a_fifo_or_a_symlink_to_dev_zero_hangs_nothing() {
    if crate::harness::local_only("the client writes no trail: the broker keeps it") {
        return;
    }
    for (planted, kind) in [
        (Planted::Fifo, "a FIFO"),
        (Planted::FifoWithReader, "a FIFO"),
        (Planted::SymlinkToDevZero, "a symbolic link"),
    ] {
        let sandbox = Sandbox::new();
        let token = sandbox.issue("a");
        let log = sandbox.state_dir().join("audit.jsonl");
        std::fs::remove_file(&log).unwrap();
        let _reader = match planted {
            Planted::SymlinkToDevZero => {
                std::os::unix::fs::symlink("/dev/zero", &log).unwrap();
                None
            }
            Planted::Fifo | Planted::FifoWithReader => {
                nix::unistd::mkfifo(&log, nix::sys::stat::Mode::S_IRWXU).unwrap();
                matches!(planted, Planted::FifoWithReader).then(|| {
                    use std::os::unix::fs::OpenOptionsExt;
                    std::fs::OpenOptions::new()
                        .read(true)
                        .custom_flags(nix::libc::O_NONBLOCK)
                        .open(&log)
                        .unwrap()
                })
            }
        };
        let within_deadline = |cmd: crate::harness::Cmd| {
            let started = Instant::now();
            let out = cmd.run();
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{kind}: took {:?}: {out:#?}",
                started.elapsed()
            );
            out
        };
        let warning = format!(
            "lease: warning: the audit log {} is {kind}, not a regular file: the trail is not written",
            log.display()
        );
        // verify decides and answers; the missing trail is one warning line.
        let granted =
            within_deadline(sandbox.lease(["verify", "a"]).env("LEASE_TOKEN", &token)).success();
        assert_eq!(
            granted.stderr.lines().collect::<Vec<_>>(),
            [&*warning],
            "{granted:#?}"
        );
        let denied =
            within_deadline(sandbox.lease(["verify", "b"]).env("LEASE_TOKEN", &token)).code_is(1);
        let lines: Vec<&str> = denied.stderr.lines().collect();
        assert!(
            lines.len() == 2 && lines[0].contains("out of scope") && lines[1] == warning,
            "{denied:#?}"
        );
        // run runs the command and revokes its lease; its several events give one warning.
        let ran = within_deadline(sandbox.run_sh("a", "echo ran")).success();
        assert_eq!(ran.stdout, "ran\n");
        assert_eq!(
            ran.stderr.lines().collect::<Vec<_>>(),
            [&*warning],
            "{ran:#?}"
        );
        let records = sandbox.records();
        let active = records
            .values()
            .filter(|r| r["state"].as_str() == Some("active"));
        assert_eq!(
            active.count(),
            1,
            "only the issued lease is active: {records:?}"
        );
        // log refuses, in one line, exit 2.
        within_deadline(sandbox.lease(["log"]))
            .code_is(2)
            .one_error_line()
            .stderr_has(&format!("{kind}, not a regular file"));
        assert!(
            std::fs::symlink_metadata(&log)
                .unwrap()
                .file_type()
                .is_symlink()
                == matches!(planted, Planted::SymlinkToDevZero),
            "the planted file is left as it is"
        );
    }
}

#[test]
fn a_rotated_audit_log_that_is_not_a_regular_file_is_refused_by_log() {
    let sandbox = Sandbox::new();
    sandbox.issue("a");
    std::os::unix::fs::symlink("/dev/zero", sandbox.state_dir().join("audit.jsonl.1")).unwrap();
    sandbox
        .lease(["log"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("audit.jsonl.1 is a symbolic link");
}

/// A program named with a line break (a forged event after it) fails in one line, and `lease
/// log` shows it escaped on the line of its own event: the trail cannot be forged that way.
#[test]
fn a_line_break_in_a_command_name_forges_no_line() {
    let sandbox = Sandbox::new();
    let forged = "2026-11-30T00:00:00Z  granted     deadbeef0000 action=deploy:prod";
    let program = format!("nosuch\n{forged}");
    let out = sandbox
        .lease(["run", "--scope", "a:b", "--"])
        .arg(&program)
        .run()
        .code_is(127)
        .one_error_line();
    assert_eq!(
        out.stderr,
        "lease: cannot run 'nosuch\\n2026-11-30T00:00:00Z  granted     deadbeef0000 action=deploy:prod': command not found\n"
    );
    let log = sandbox.lease(["log"]).run().success();
    assert!(
        !log.stdout
            .lines()
            .any(|line| line.starts_with("2026-11-30T00:00:00Z")),
        "{}",
        log.stdout
    );
    if !crate::harness::broker_mode() {
        // Through a broker the trail names the broker's client; the record, the program.
        assert!(
            log.stdout.contains("command=nosuch\\n2026"),
            "{}",
            log.stdout
        );
    }
    // A run of a program named so, still running: its row in `lease list` is one line.
    let named = sandbox.path(&format!("it\n{forged}"));
    std::os::unix::fs::symlink("/bin/sh", &named).unwrap();
    let mut run = sandbox
        .lease(["run", "--scope", "a:b", "--"])
        .arg(&named)
        .args(["-c", "echo ready; exec sleep 60"])
        .start();
    run.lines.expect("ready");
    let list = sandbox.lease(["list"]).run().success();
    assert_eq!(list.stdout.lines().count(), 2, "{}", list.stdout);
    run.signal(nix::sys::signal::Signal::SIGTERM);
    run.wait();
}

#[test]
fn log_filters_by_lease_and_time() {
    let sandbox = Sandbox::new();
    let first = sandbox.issue_json("a", &[]);
    let second = sandbox.issue_json("b", &[]);
    sandbox
        .verify(second["token"].as_str().unwrap(), "b")
        .success();
    let out = sandbox
        .lease(["log", "--id", second["id"].as_str().unwrap()])
        .run()
        .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:#?}");
    assert!(
        lines[0].contains("issued")
            && lines[1].contains("granted")
            && lines[1].contains("action=b")
    );
    assert!(!out.stdout.contains(first["id"].as_str().unwrap()));
    assert_eq!(
        sandbox
            .lease(["log", "--since", "1h"])
            .run()
            .success()
            .stdout
            .lines()
            .count(),
        3
    );
    sandbox
        .lease(["log", "--since", "soon"])
        .run()
        .code_is(2)
        .one_error_line();
}
