//! Signals: forwarding exactly once, the terminal's own signals, and what lease leaves behind
//! when it is killed itself.

use std::io::{Read, Write};

use nix::sys::signal::Signal;
use portable_pty::{CommandBuilder, PtySize, native_pty_system};

use crate::harness::{Lines, Sandbox, death_signal, fixture, kill_pid, lease_bin, wait_for_exit};

const WATCHED: [&str; 6] = ["INT", "TERM", "HUP", "QUIT", "USR1", "USR2"];

#[test]
fn each_forwarded_signal_reaches_the_child_exactly_once() {
    let sandbox = Sandbox::new();
    let mut args = vec!["run", "--scope", "a", "--", "python3", "-u"];
    let script = fixture("sigcount.py");
    args.push(script.to_str().unwrap());
    args.push("USR2");
    args.extend(WATCHED);
    let mut run = sandbox.lease(&args).start();
    run.lines.expect("ready");
    for (name, signal) in [
        ("INT", Signal::SIGINT),
        ("TERM", Signal::SIGTERM),
        ("HUP", Signal::SIGHUP),
        ("QUIT", Signal::SIGQUIT),
        ("USR1", Signal::SIGUSR1),
    ] {
        run.signal(signal);
        run.lines.expect(&format!("got {name} 1"));
    }
    run.signal(Signal::SIGUSR2);
    let status = run.wait();
    assert_eq!(status.code(), Some(0));
    let lines = run.lines.rest();
    let got: Vec<&String> = lines.iter().filter(|l| l.starts_with("got")).collect();
    assert_eq!(
        got,
        [
            "got INT 1",
            "got TERM 1",
            "got HUP 1",
            "got QUIT 1",
            "got USR1 1",
            "got USR2 1"
        ],
        "{lines:?}"
    );
}

#[test]
fn kill_term_of_lease_ends_a_plain_child_and_lease_dies_of_sigterm() {
    let sandbox = Sandbox::new();
    let mut run = sandbox
        .lease([
            "run",
            "--scope",
            "a",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 60",
        ])
        .start();
    run.lines.expect("ready");
    run.signal(Signal::SIGTERM);
    let status = run.wait();
    assert_eq!(death_signal(status), Some(15), "{status:?}");
    // As a shell reports it: the child sends TERM to its parent, lease.
    let out = sandbox
        .sh("lease run --scope a -- sh -c 'kill -TERM $PPID; exec sleep 60'; echo status=$?")
        .run()
        .success();
    assert_eq!(out.stdout.trim(), "status=143", "{out:#?}");
    assert!(
        sandbox
            .records()
            .values()
            .all(|r| r["state"].as_str() == Some("revoked"))
    );
}

#[test]
fn sigkill_of_lease_leaves_a_token_that_verify_denies_as_owner_gone() {
    let sandbox = Sandbox::new();
    let mut run = sandbox
        .lease([
            "run",
            "--scope",
            "a",
            "--",
            "sh",
            "-c",
            "echo $$ $LEASE_TOKEN; exec sleep 60",
        ])
        .start();
    let line = run.lines.expect("agt_");
    let (child, token) = line.split_once(' ').unwrap();
    sandbox
        .lease(["verify", "a"])
        .env("LEASE_TOKEN", token)
        .run()
        .success();
    run.signal(Signal::SIGKILL);
    run.wait();
    sandbox
        .lease(["verify", "a"])
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(1)
        .stderr_has("owner gone");
    kill_pid(child.parse().unwrap());
}

#[test]
fn signals_ignored_at_start_stay_ignored_and_the_mask_is_empty() {
    let sandbox = Sandbox::new();
    let status_of = |script: &str| {
        let out = sandbox.sh(script).run().success();
        out.stdout
            .lines()
            .filter(|l| l.starts_with("SigIgn") || l.starts_with("SigBlk"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let probe = "grep -E '^Sig(Ign|Blk)' /proc/self/status";
    for setup in ["", "trap '' HUP;", "trap '' HUP PIPE INT;"] {
        let without = status_of(&format!("{setup} sh -c \"{probe}\""));
        let with = status_of(&format!("{setup} lease run --scope a -- sh -c \"{probe}\""));
        assert_eq!(with, without, "setup {setup:?}");
        assert!(
            with.iter().any(|l| l == "SigBlk:\t0000000000000000"),
            "{with:?}"
        );
    }
}

#[test]
fn nohup_keeps_sighup_ignored_in_the_child() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .sh("nohup lease run --scope a -- sh -c 'grep ^SigIgn /proc/self/status' 2>/dev/null")
        .run()
        .success();
    let mask = out.stdout.trim().strip_prefix("SigIgn:").unwrap().trim();
    let mask = u64::from_str_radix(mask, 16).unwrap();
    assert_eq!(
        mask & (1 << (libc_sighup() - 1)),
        1 << (libc_sighup() - 1),
        "SIGHUP ignored: {out:#?}"
    );
}

fn libc_sighup() -> i32 {
    Signal::SIGHUP as i32
}

/// Starts `lease run` on a fresh pseudo-terminal as its session leader, like a shell would.
struct Terminal {
    // Held so the terminal stays open for as long as the test runs.
    _master: Box<dyn portable_pty::MasterPty + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    lines: Lines,
}

impl Terminal {
    fn start(sandbox: &Sandbox, args: &[&str]) -> Terminal {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows: 24,
                cols: 120,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("openpty");
        let mut command = CommandBuilder::new(lease_bin());
        command.args(args);
        command.env_clear();
        command.env("PATH", std::env::var("PATH").unwrap_or_default());
        command.env("LEASE_STATE_DIR", sandbox.state_dir());
        command.env("HOME", sandbox.path("home"));
        command.env("XDG_CONFIG_HOME", sandbox.path("config"));
        let child = pair.slave.spawn_command(command).expect("spawn on pty");
        drop(pair.slave);
        let reader: Box<dyn Read + Send> = pair.master.try_clone_reader().expect("reader");
        let writer = pair.master.take_writer().expect("writer");
        Terminal {
            _master: pair.master,
            child,
            writer,
            lines: Lines::from(reader),
        }
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.process_id().expect("pid")).unwrap()
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.writer.write_all(keys).expect("write to pty");
        self.writer.flush().expect("flush pty");
    }
}

#[test]
fn ctrl_c_on_a_terminal_reaches_the_child_exactly_once_and_it_keeps_the_terminal() {
    let sandbox = Sandbox::new();
    let script = fixture("sigcount.py");
    let inner = format!(
        "test -t 0 && test -t 1 && echo on-a-tty; exec python3 -u {} USR1 INT USR1",
        script.display()
    );
    let mut terminal =
        Terminal::start(&sandbox, &["run", "--scope", "a", "--", "sh", "-c", &inner]);
    terminal.lines.expect("on-a-tty");
    terminal.lines.expect("ready");
    terminal.type_keys(b"\x03");
    terminal.lines.expect("got INT 1");
    // USR1 sent to lease is forwarded after lease has handled the terminal's SIGINT, so a
    // second SIGINT from lease would be counted before it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(terminal.pid()), Signal::SIGUSR1).unwrap();
    terminal.lines.expect("got USR1 1");
    let status = terminal.child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let lines = terminal.lines.rest();
    assert!(!lines.iter().any(|l| l.contains("got INT 2")), "{lines:?}");
}

#[test]
fn forty_parallel_runs_each_verify_their_own_scope_and_nothing_is_lost() {
    let sandbox = Sandbox::new();
    let mut children: Vec<_> = (0..40)
        .map(|i| {
            let script = format!(
                "lease verify job:{i} && ! lease verify job:{} 2>/dev/null",
                i + 1
            );
            let mut command = sandbox
                .lease([
                    "run",
                    "--scope",
                    &format!("job:{i}"),
                    "--",
                    "sh",
                    "-c",
                    &script,
                ])
                .command;
            command
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            command.spawn().unwrap()
        })
        .collect();
    for (i, child) in children.iter_mut().enumerate() {
        assert_eq!(wait_for_exit(child).code(), Some(0), "run {i}");
    }
    let records = sandbox.records();
    assert_eq!(records.len(), 40, "every lease is on record");
    assert!(
        records
            .values()
            .all(|r| r["state"].as_str() == Some("revoked"))
    );
    let active = sandbox.lease(["list", "--json"]).run().success().json();
    assert_eq!(active, serde_json::json!([]));
}
