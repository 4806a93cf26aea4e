//! The trail and the everyday ergonomics: audit log, log, receipts, suggest, status,
//! completions and the man page, environment scrubbing, masking.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::{Sandbox, kill_pid, wait_until_past};

fn events(sandbox: &Sandbox) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a whole JSON line ({e}): {l:?}"))
        })
        .collect()
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
    let denied = of_kind(&events, "denied");
    assert!(
        denied
            .iter()
            .any(|d| d["action"] == "c" && d["reason"] == "out of scope"),
        "{denied:?}"
    );
    let exit = of_kind(&events, "child_exit")[0];
    assert_eq!(exit["exit_code"], 3);
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

#[test]
fn a_receipt_holds_the_lease_every_decision_and_the_exit() {
    let sandbox = Sandbox::new();
    let receipt = sandbox.path("receipt.json");
    let out = sandbox
        .lease(["run", "--scope", "read:*", "--receipt", receipt.to_str().unwrap(), "--", "sh", "-c"])
        .arg("echo $LEASE_TOKEN; lease verify read:a; lease verify write:b; lease issue --scope read:x | LEASE_TOKEN= lease verify read:x --token-stdin; lease run --scope read:y -- lease verify read:y")
        .run()
        .success();
    let token = out.stdout.lines().next().unwrap().to_owned();
    let text = std::fs::read_to_string(&receipt).unwrap();
    assert!(!text.contains(&token[4..]), "the receipt holds no token");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["lease"]["scope"], serde_json::json!(["read:*"]));
    let decisions = crate::harness::receipt_decisions(&json);
    let expected = [
        ("read:a", true),
        ("write:b", false),
        ("read:x", true),
        ("read:y", true),
    ];
    let expected: Vec<(String, bool)> = expected
        .iter()
        .map(|(a, g)| ((*a).to_owned(), *g))
        .collect();
    assert_eq!(
        decisions, expected,
        "nested leases and nested runs count too"
    );
    assert_eq!(json["exit"]["code"], 0);
    assert!(json["duration_ms"].as_u64().is_some());
    assert_eq!(
        std::fs::metadata(&receipt).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn a_receipt_that_cannot_be_written_stops_the_run_before_it_starts() {
    let sandbox = Sandbox::new();
    let ran = sandbox.path("ran");
    let script = format!("touch '{}'", ran.display());
    for (receipt, why) in [
        (
            "/nonexistent/dir/r.json".to_owned(),
            "lease: cannot write the receipt /nonexistent/dir/r.json: its directory /nonexistent/dir does not take new files: ",
        ),
        (
            "/dev/full".to_owned(),
            "lease: cannot write the receipt /dev/full: it exists and is not a regular file; choose a new file name\n",
        ),
    ] {
        let out = sandbox
            .lease(["run", "--scope", "a", "--receipt", &receipt, "--"])
            .arg("sh")
            .arg("-c")
            .arg(&script)
            .run()
            .code_is(125)
            .one_error_line();
        assert!(out.stderr.starts_with(why), "{out:#?}");
        assert!(
            !ran.exists(),
            "the command ran although its receipt could not be written"
        );
        assert!(
            sandbox.records().is_empty(),
            "nothing is minted: {:?}",
            sandbox.records()
        );
    }
    assert!(
        std::fs::metadata("/dev/full")
            .unwrap()
            .file_type()
            .is_char_device(),
        "/dev/full is still the device"
    );
}

#[test]
fn suggest_names_the_two_scopes_used_of_four() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["run", "--scope", "read:articles,write:draft,deploy:staging,admin:*", "--", "sh", "-c"])
        .arg("lease verify read:articles; lease verify write:draft; lease verify read:articles; lease verify delete:all 2>/dev/null; echo $LEASE_ID")
        .run()
        .success();
    let id = out.stdout.trim();
    let human = sandbox.lease(["suggest", id]).run().success().stdout;
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines[0], "--scope read:articles,write:draft");
    assert_eq!(lines[1], "unused: deploy:staging,admin:*");
    assert_eq!(lines[2], "denied: delete:all (out of scope)");
    let json = sandbox
        .lease(["suggest", id, "--json"])
        .run()
        .success()
        .json();
    assert_eq!(
        json["suggested"],
        serde_json::json!(["read:articles", "write:draft"])
    );
    assert_eq!(
        json["unused"],
        serde_json::json!(["deploy:staging", "admin:*"])
    );
    sandbox
        .lease(["suggest", "0123456789ab"])
        .run()
        .code_is(1)
        .one_error_line();
}

#[test]
fn status_inside_a_run_and_after_it() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "read:x,write:y=2",
            "--uses",
            "5",
            "--",
            "sh",
            "-c",
        ])
        .arg("lease status; lease status --json; echo $LEASE_TOKEN")
        .run()
        .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("lease:") && lines[0].ends_with("(active)"),
        "{out:#?}"
    );
    assert_eq!(lines[1], "scope:     read:x,write:y=2");
    assert!(
        lines[2].starts_with("expires:")
            && (lines[2].contains("(in 9m") || lines[2].contains("(in 10m")),
        "{out:#?}"
    );
    assert_eq!(lines[3], "uses left: 5");
    let json: serde_json::Value = serde_json::from_str(lines[5]).unwrap();
    assert_eq!(json["valid"], true);
    assert_eq!(json["scope_uses_left"], serde_json::json!({"write:y": 2}));
    let token = lines[6];
    let after = sandbox
        .lease(["status", "--json"])
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(1);
    assert_eq!(after.json()["state"], "revoked");
    assert!(
        after.stderr.contains("no longer valid: revoked"),
        "{after:#?}"
    );
    sandbox.lease(["status"]).run().code_is(2).one_error_line();
}

#[test]
fn completions_and_man_page_are_generated_and_bash_offers_the_subcommands() {
    let sandbox = Sandbox::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = sandbox.lease(["completions", shell]).run().success();
        assert!(out.stdout.contains("lease"), "{shell}");
    }
    sandbox
        .lease(["completions", "tcsh"])
        .run()
        .code_is(2)
        .one_error_line();
    let man = sandbox.lease(["man"]).run().success().stdout;
    assert!(
        man.starts_with(".ie") || man.contains(".TH lease 1"),
        "{man}"
    );
    let script = sandbox.path("lease.bash");
    std::fs::write(
        &script,
        sandbox
            .lease(["completions", "bash"])
            .run()
            .success()
            .stdout,
    )
    .unwrap();
    // As bash calls a completion function: the command, the word being completed, the one before.
    let probe = format!(
        "source {}; COMP_WORDS=(lease \"\"); COMP_CWORD=1; _lease lease \"\" lease; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let offered = sandbox
        .command("bash")
        .arg("-c")
        .arg(probe)
        .run()
        .success()
        .stdout;
    for sub in [
        "run", "verify", "issue", "list", "revoke", "gc", "renew", "log", "suggest", "status",
    ] {
        assert!(
            offered.lines().any(|l| l == sub),
            "{sub} not offered: {offered}"
        );
    }
}

#[test]
fn every_subcommand_has_a_man_page_and_lease_1_names_only_pages_that_exist() {
    let sandbox = Sandbox::new();
    let dir = sandbox.path("man1");
    let out = sandbox.lease(["man", "--dir"]).arg(&dir).run().success();
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    let mut written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    written.sort();
    let subcommands = [
        "completions",
        "gc",
        "issue",
        "list",
        "log",
        "man",
        "renew",
        "revoke",
        "run",
        "status",
        "suggest",
        "verify",
    ];
    let mut expected: Vec<String> = subcommands.iter().map(|s| format!("lease-{s}.1")).collect();
    expected.push("lease.1".to_owned());
    expected.sort();
    assert_eq!(written, expected);

    let have_man = sandbox.command("man").arg("--version").run().code() == Some(0);
    for (page, args) in std::iter::once(("lease".to_owned(), vec![]))
        .chain(subcommands.iter().map(|s| (format!("lease-{s}"), vec![*s])))
    {
        let file = dir.join(format!("{page}.1"));
        let roff = std::fs::read_to_string(&file).unwrap();
        let printed = sandbox
            .lease([&["man"][..], &args].concat())
            .run()
            .success();
        assert_eq!(printed.stdout, roff, "lease man {args:?} prints {page}.1");
        let title = format!(".TH {page} 1 ");
        assert!(
            roff.contains(&title) && roff.contains(".SH NAME") && roff.contains(".SH SYNOPSIS"),
            "{page}: {roff}"
        );
        if have_man {
            let rendered = sandbox
                .command("man")
                .arg("--warnings")
                .arg("-l")
                .arg(&file)
                .env("MANWIDTH", "80")
                .run()
                .success();
            assert_eq!(rendered.stderr, "", "{page} renders without warnings");
            assert!(
                rendered.stdout.contains("SYNOPSIS"),
                "{page}: {rendered:#?}"
            );
        }
    }

    let lease = std::fs::read_to_string(dir.join("lease.1")).unwrap();
    let section = |name: &str| {
        let start = lease
            .find(&format!(".SH {name}\n"))
            .unwrap_or_else(|| panic!("lease(1) has no {name} section"));
        let body = &lease[start + name.len() + 5..];
        body[..body.find(".SH ").unwrap_or(body.len())].to_owned()
    };
    let exit_status = section("\"EXIT STATUS\"");
    for code in ["0", "1", "2", "124", "125", "126", "127", "128"] {
        assert!(
            exit_status.contains(&format!("\\fB{code}\\fR")),
            "{code}: {exit_status}"
        );
    }
    let environment = section("ENVIRONMENT");
    for name in [
        "LEASE_TOKEN",
        "LEASE_STATE_DIR",
        "LEASE_CONFIG",
        "LEASE_ID",
        "LEASE_SCOPE",
    ] {
        assert!(
            environment.contains(&format!("\\fB{name}\\fR")),
            "{name}: {environment}"
        );
    }
    let files = section("FILES");
    for path in ["config.toml", "leases/ID.toml", "audit.jsonl"] {
        assert!(files.contains(path), "{path}: {files}");
    }
    // Every page lease(1) refers to, in SEE ALSO and SUBCOMMANDS alike, is one that exists.
    let refers = regex::Regex::new(r"(lease(?:\\-[a-z]+)*)(?:\\fR)?\((\d)\)").unwrap();
    let see_also = section("\"SEE ALSO\"");
    let named: Vec<String> = refers
        .captures_iter(&see_also)
        .map(|c| format!("{}.{}", c[1].replace("\\-", "-"), &c[2]))
        .collect();
    let mut subpages = expected.clone();
    subpages.retain(|p| p != "lease.1");
    let mut sorted = named.clone();
    sorted.sort();
    assert_eq!(sorted, subpages, "SEE ALSO names every subcommand's page");
    for reference in refers.captures_iter(&lease) {
        let page = format!("{}.{}", reference[1].replace("\\-", "-"), &reference[2]);
        assert!(
            expected.contains(&page),
            "lease(1) refers to {page}, which does not exist"
        );
    }
}

#[test]
fn scrub_removes_long_lived_secrets_and_clean_env_starts_from_nothing() {
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

#[test]
fn mask_hides_the_token_on_both_streams_including_a_last_line_without_newline() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["run", "--scope", "a", "--mask", "--", "sh", "-c"])
        .arg("echo \"out $LEASE_TOKEN end\"; echo \"err $LEASE_TOKEN\" >&2; printf 'twice %s%s' \"$LEASE_TOKEN\" \"$LEASE_TOKEN\"; printf 'x %s' \"$LEASE_TOKEN\" >&2")
        .run()
        .success();
    assert_eq!(out.stdout, "out *** end\ntwice ******");
    assert_eq!(out.stderr, "err ***\nx ***");
    let records = sandbox.records();
    assert_eq!(records.len(), 1);
}

#[test]
fn mask_streams_line_by_line_and_a_lingering_grandchild_does_not_hold_lease() {
    let sandbox = Sandbox::new();
    let mut run = sandbox
        .lease([
            "run",
            "--scope",
            "a",
            "--mask",
            "--",
            "sh",
            "-c",
            "echo first $LEASE_TOKEN; read line; echo second",
        ])
        .start();
    assert_eq!(
        run.lines.expect("first"),
        "first ***",
        "the line arrives while the command still runs"
    );
    run.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    run.lines.expect("second");
    assert!(run.wait().success());

    let started = Instant::now();
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "a",
            "--mask",
            "--",
            "sh",
            "-c",
            "sleep 30 & echo $!; echo done",
        ])
        .run()
        .success();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "held for {:?}",
        started.elapsed()
    );
    let grandchild: i32 = out.stdout.lines().next().unwrap().parse().unwrap();
    kill_pid(grandchild);
    assert!(out.stdout.ends_with("done\n"), "{out:#?}");
}

#[test]
fn status_of_a_used_up_lease_is_invalid_and_exits_1() {
    let sandbox = Sandbox::new();
    for (scope, uses) in [("a", "--uses=1"), ("a=1", "--uses=9")] {
        let out = sandbox
            .lease(["run", "--scope", scope, uses, "--", "sh", "-c"])
            .arg("lease verify a; lease status; echo status=$?; echo $LEASE_ID")
            .run()
            .success();
        let lines: Vec<&str> = out.stdout.lines().collect();
        let id = lines.last().unwrap();
        assert_eq!(lines[0], format!("lease:     {id} (used up)"), "{out:#?}");
        assert_eq!(lines[lines.len() - 2], "status=1", "{out:#?}");
        assert_eq!(
            out.stderr,
            format!("lease: lease {id} is no longer valid: used up: lease {id} has no uses left\n")
        );
    }
    let token = sandbox.issue_json("a", &["--uses", "1"]);
    sandbox
        .verify(token["token"].as_str().unwrap(), "a")
        .success();
    let out = sandbox
        .lease(["status", "--json"])
        .env("LEASE_TOKEN", token["token"].as_str().unwrap())
        .run()
        .code_is(1);
    let json = out.json();
    assert_eq!(
        (&json["valid"], &json["state"], &json["seconds_left"]),
        (
            &serde_json::json!(false),
            &serde_json::json!("used up"),
            &serde_json::json!(0)
        )
    );
}

#[test]
fn status_and_renew_take_the_token_from_standard_input() {
    let sandbox = Sandbox::new();
    let issued = sandbox.issue_json("a", &["--ttl", "60"]);
    let (id, token) = (
        issued["id"].as_str().unwrap(),
        issued["token"].as_str().unwrap(),
    );
    let out = sandbox
        .lease(["status", "--token-stdin"])
        .stdin(format!("{token}\n"))
        .run()
        .success();
    assert_eq!(
        out.stdout.lines().next(),
        Some(format!("lease:     {id} (active)").as_str())
    );
    let out = sandbox
        .lease(["renew", "--token-stdin", "--ttl", "60"])
        .stdin(token)
        .run()
        .success();
    assert!(
        humantime::parse_rfc3339(out.stdout.trim()).is_ok() && out.stderr.is_empty(),
        "{out:#?}"
    );
    // The fix the error suggests is one these subcommands accept.
    for sub in ["status", "renew"] {
        let out = sandbox.lease([sub]).run().code_is(2).one_error_line();
        assert!(
            out.stderr
                .ends_with("pass --token-env NAME or --token-stdin\n"),
            "{out:#?}"
        );
        let out = sandbox
            .lease([sub, "--token-stdin"])
            .stdin("")
            .run()
            .code_is(2)
            .one_error_line();
        assert!(
            out.stderr
                .ends_with(": no token: standard input is empty\n"),
            "{out:#?}"
        );
    }
}

#[test]
fn suggest_on_a_lease_that_has_not_ended_says_so() {
    let sandbox = Sandbox::new();
    let issued = sandbox.issue_json("read:a,write:b", &[]);
    let id = issued["id"].as_str().unwrap();
    let suggest = |args: &[&str]| {
        let mut all = vec!["suggest", id];
        all.extend(args);
        sandbox.lease(all).run().success()
    };
    assert_eq!(
        suggest(&[]).stdout,
        format!(
            "lease {id} has not ended yet: it has been granted nothing so far\nunused: read:a,write:b\n"
        )
    );
    sandbox
        .verify(issued["token"].as_str().unwrap(), "read:a")
        .success();
    assert_eq!(
        suggest(&[]).stdout,
        format!(
            "lease {id} has not ended yet: this is what it has used so far\n--scope read:a\nunused: write:b\n"
        )
    );
    assert_eq!(suggest(&["--json"]).json()["ended"], false);
    sandbox.lease(["revoke", id]).run().success();
    assert_eq!(suggest(&[]).stdout, "--scope read:a\nunused: write:b\n");
    assert_eq!(suggest(&["--json"]).json()["ended"], true);
}
