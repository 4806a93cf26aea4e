//! lease on a real pseudo-terminal: the terminal's own signals (Ctrl-C, Ctrl-\, Ctrl-Z), job
//! control under an interactive shell, a child that leaves the session, and nested leases.

use std::io::{Read, Write};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use portable_pty::CommandBuilder;

use crate::harness::{Lines, Sandbox, fixture, lease_bin};

/// A program running as the session leader of a fresh pseudo-terminal, as in a terminal window.
struct Terminal {
    // Held so the terminal stays open for as long as the test runs.
    _master: Box<dyn portable_pty::MasterPty + Send>,
    child: Box<dyn portable_pty::Child + Send + Sync>,
    writer: Box<dyn Write + Send>,
    lines: Lines,
}

impl Terminal {
    fn start(sandbox: &Sandbox, program: &str, args: &[&str]) -> Terminal {
        let pair = crate::harness::open_pty();
        let mut command = CommandBuilder::new(program);
        command.args(args);
        command.env_clear();
        let bin_dir = lease_bin().parent().expect("bin dir");
        let path = std::env::var("PATH").unwrap_or_default();
        command.env("PATH", format!("{}:{path}", bin_dir.display()));
        command.env("LEASE_STATE_DIR", sandbox.state_dir());
        command.env("HOME", sandbox.path("home"));
        command.env("XDG_CONFIG_HOME", sandbox.path("config"));
        command.env("TERM", "dumb");
        command.cwd(sandbox.path("home"));
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

    /// `lease ARGS` as the terminal's session leader.
    fn lease(sandbox: &Sandbox, args: &[&str]) -> Terminal {
        Terminal::start(sandbox, lease_bin().to_str().expect("utf-8 path"), args)
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.process_id().expect("pid")).expect("pid"))
    }

    fn type_keys(&mut self, keys: &[u8]) {
        self.writer.write_all(keys).expect("write to pty");
        self.writer.flush().expect("flush pty");
    }

    /// Waits for the session leader to exit, and returns every line seen.
    fn finish(mut self) -> (portable_pty::ExitStatus, Vec<String>) {
        let status = self.child.wait().expect("wait");
        (status, self.lines.rest())
    }
}

fn sigcount(exit_on: &str, watched: &[&str]) -> String {
    format!(
        "exec python3 -u {} {exit_on} {}",
        fixture("sigcount.py").display(),
        watched.join(" ")
    )
}

fn count(lines: &[String], what: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.contains(&format!("got {what} ")))
        .count()
}

/// Runs `lease ARGS` on a terminal whose innermost command is a signal counter, types Ctrl-C
/// `presses` times (waiting for each to be counted), then sends SIGUSR1 to the outermost lease,
/// which ends the counter. USR1 is forwarded only after lease has handled the terminal's
/// SIGINTs, so a SIGINT that lease wrongly sent again would be counted before it. Returns the
/// number of SIGINTs the command saw, and every line of output.
fn ctrl_c_scenario(sandbox: &Sandbox, args: &[&str], presses: usize) -> (usize, Vec<String>) {
    key_scenario(sandbox, args, (b"\x03", "INT"), presses)
}

/// The same for any key that makes the terminal signal its foreground group: `key` is the
/// byte typed and the name of the signal it raises.
fn key_scenario(
    sandbox: &Sandbox,
    args: &[&str],
    key: (&[u8], &str),
    presses: usize,
) -> (usize, Vec<String>) {
    let (bytes, signal) = key;
    let mut terminal = Terminal::lease(sandbox, args);
    terminal.lines.expect("ready");
    for press in 1..=presses {
        terminal.type_keys(bytes);
        terminal.lines.expect(&format!("got {signal} {press}"));
    }
    kill(terminal.pid(), Signal::SIGUSR1).unwrap();
    terminal.lines.expect("got USR1 1");
    let (status, lines) = terminal.finish();
    assert!(status.success(), "{status:?}");
    (count(&lines, signal), lines)
}

fn run_sh(inner: &str) -> Vec<&str> {
    vec!["run", "--scope", "a", "--", "sh", "-c", inner]
}

#[test]
fn ctrl_c_reaches_the_child_exactly_once_and_it_keeps_the_terminal() {
    let sandbox = Sandbox::new();
    let inner = format!(
        "test -t 0 && test -t 1 && echo on-a-tty; {}",
        sigcount("USR1", &["INT", "USR1"])
    );
    let (ints, lines) = ctrl_c_scenario(&sandbox, &run_sh(&inner), 1);
    assert_eq!(ints, 1, "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("on-a-tty")), "{lines:?}");
    sandbox.assert_all_revoked(1);
}

#[test]
fn ctrl_backslash_reaches_the_child_exactly_once_and_the_lease_is_revoked() {
    let sandbox = Sandbox::new();
    let inner = sigcount("USR1", &["QUIT", "USR1"]);
    let (quits, lines) = key_scenario(&sandbox, &run_sh(&inner), (b"\x1c", "QUIT"), 1);
    assert_eq!(quits, 1, "{lines:?}");
    sandbox.assert_all_revoked(1);
}

#[test]
fn ctrl_c_twice_to_a_child_that_survives_the_first_is_delivered_twice() {
    let sandbox = Sandbox::new();
    let inner = sigcount("USR1", &["INT", "USR1"]);
    let (ints, lines) = ctrl_c_scenario(&sandbox, &run_sh(&inner), 2);
    assert_eq!(ints, 2, "{lines:?}");
}

#[test]
fn a_child_that_calls_setsid_still_gets_ctrl_c_exactly_once() {
    let sandbox = Sandbox::new();
    // `setsid` execs in place (the child is not a group leader), leaving lease's session.
    let inner = sigcount("USR1", &["INT", "USR1"]).replacen("exec ", "exec setsid ", 1);
    let (ints, lines) = ctrl_c_scenario(&sandbox, &run_sh(&inner), 1);
    assert_eq!(ints, 1, "{lines:?}");
}

#[test]
fn nested_leases_pass_ctrl_c_to_the_innermost_child_once() {
    let sandbox = Sandbox::new();
    let inner = sigcount("USR1", &["INT", "USR1"]);
    // USR1 sent to the outer lease is forwarded to the inner one, which forwards it on.
    let mut args = vec!["run", "--scope", "a,b", "--", "lease"];
    args.extend(run_sh(&inner));
    let (ints, lines) = ctrl_c_scenario(&sandbox, &args, 1);
    assert_eq!(ints, 1, "{lines:?}");
    assert_eq!(sandbox.records().len(), 2);
}

/// Waits for a line `LABEL<number>` printed by a command (not the terminal's echo of the
/// command line that prints it) and returns the number.
fn number_after(lines: &mut Lines, label: &str) -> i32 {
    let number = |line: &str| {
        line.rsplit(label)
            .next()
            .filter(|_| line.contains(label))
            .and_then(|n| n.trim().parse::<i32>().ok())
    };
    let line = lines.expect_that(label, |l| number(l).is_some());
    number(&line).expect("number")
}

/// Whether process `pid` is in `state` within the harness's patience.
fn reaches_state(pid: i32, state: char) -> bool {
    let deadline = std::time::Instant::now() + crate::harness::PATIENCE;
    while std::time::Instant::now() < deadline {
        if process_state(pid) == state {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    false
}

fn process_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after.chars().next().expect("state")
}

#[test]
fn ctrl_z_stops_lease_and_child_and_fg_resumes_both_under_an_interactive_shell() {
    let sandbox = Sandbox::new();
    let mut terminal = Terminal::start(
        &sandbox,
        "bash",
        &["--norc", "--noprofile", "--noediting", "-i"],
    );
    // The shell announces each prompt on a line of its own, so the test types only when the
    // shell is reading.
    terminal.type_keys(b"PS1=''; PROMPT_COMMAND='echo prompt-$((1+1))'\n");
    terminal.lines.expect("prompt-2");
    terminal.type_keys(
        b"lease run --scope a -- sh -c 'echo lease=$PPID; echo child=$$; read line; echo \"child read $line\"; exit 5'\n",
    );
    let lease = number_after(&mut terminal.lines, "lease=");
    let child = number_after(&mut terminal.lines, "child=");
    terminal.type_keys(b"\x1a");
    terminal.lines.expect("Stopped");
    terminal.lines.expect("prompt-2");
    // Each process of the job stops when it next runs; /proc is the only way to watch that.
    assert!(reaches_state(lease, 'T'), "lease is stopped");
    assert!(reaches_state(child, 'T'), "the child is stopped");
    terminal.type_keys(b"fg\n");
    terminal.type_keys(b"hello\n");
    terminal.lines.expect("child read hello");
    terminal.lines.expect("prompt-2");
    terminal.type_keys(b"echo status=$?\n");
    terminal.lines.expect("status=5");
    terminal.type_keys(b"exit\n");
    let (status, _) = terminal.finish();
    assert!(status.success(), "{status:?}");
    sandbox.assert_all_revoked(1);
}
