//! `lease run --mask` between the command and lease's own output: the token masked wherever
//! the command's writes cut it, a reader that goes away (`| head -1`), and output that reaches
//! the reader as the command writes it (partial lines, prompts, the order of the two streams).

use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::{Duration, Instant};

use portable_pty::CommandBuilder;

use crate::harness::{PATIENCE, Sandbox, kill_pid, lease_bin, wait_for_exit};

/// Bytes from a reader, collected on a thread, so that a test can wait for a partial line.
struct Bytes {
    rx: Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Bytes {
    fn from(mut reader: impl Read + Send + 'static) -> Bytes {
        let (tx, rx) = channel();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Bytes {
            rx,
            seen: Vec::new(),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Waits until what was read contains `needle`, for at most PATIENCE.
    #[track_caller]
    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.text().contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(bytes) => self.seen.extend(bytes),
                Err(_) => panic!("no {needle:?} within {PATIENCE:?}; saw {:?}", self.text()),
            }
        }
    }
}

/// `python3 -c SCRIPT` under `lease run --mask`; the script writes the token to the file
/// `token` too, so that the test knows what must not appear.
fn masked_python(sandbox: &Sandbox, script: &str) -> (crate::harness::Out, String) {
    let prelude = "import os, sys, time\nt = os.environ['LEASE_TOKEN'].encode()\nopen('token', 'wb').write(t)\n";
    let out = sandbox
        .lease(["run", "--scope", "a", "--mask", "--", "python3", "-c"])
        .arg(format!("{prelude}{script}"))
        .run()
        .success();
    let token = std::fs::read_to_string(sandbox.path("token")).unwrap();
    assert!(token.starts_with("agt_"), "{token:?}");
    (out, token)
}

#[test]
fn mask_hides_a_token_that_follows_a_line_longer_than_64_kib() {
    let sandbox = Sandbox::new();
    // The issue's case: a 70 KB line without a newline, flushed; then the token and a newline.
    // Then a line that ends just short of 64 KiB before the token, which comes on its own, and
    // its newline later; and one write whose pieces, as lease reads them, cut the token.
    for (n, script) in [
        (
            70_000,
            "os.write(1, b'x' * 70000); time.sleep(0.2); os.write(1, t + b'\\n')",
        ),
        (
            65_500,
            "os.write(1, b'x' * 65500); time.sleep(0.2); os.write(1, t); time.sleep(0.2); os.write(1, b'\\n')",
        ),
        (73_676, "os.write(1, b'x' * 73676 + t + b'\\n')"),
    ] {
        let (out, token) = masked_python(&sandbox, script);
        assert!(
            !out.stdout.contains(&token) && !out.stdout.contains(&token[1..]),
            "the token leaked after {n} bytes"
        );
        assert_eq!(out.stdout.len(), n + 4, "after {n} bytes");
        assert!(out.stdout.ends_with("x***\n"), "after {n} bytes");
    }
}

#[test]
fn mask_hides_a_token_written_a_byte_at_a_time_and_between_decoys() {
    let sandbox = Sandbox::new();
    let script = "\
for b in b'agt' + t + b' agt_' + t[:10] + b'|' + t:
    os.write(1, bytes([b])); time.sleep(0.001)
os.write(2, b'a' + t[:5]); time.sleep(0.2); os.write(2, t[5:] + b'a')";
    let (out, token) = masked_python(&sandbox, script);
    assert_eq!(out.stdout, format!("agt*** agt_{}|***", &token[..10]));
    assert_eq!(out.stderr, "a***a");
}

/// Runs `script` with bash, which reports each pipeline's PIPESTATUS.
fn bash(sandbox: &Sandbox, script: &str) -> crate::harness::Out {
    let started = Instant::now();
    let out = sandbox.command("bash").arg("-c").arg(script).run();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}: {out:#?}",
        started.elapsed()
    );
    out
}

#[test]
fn mask_with_a_reader_that_goes_away_ends_as_the_bare_pipeline_does() {
    let sandbox = Sandbox::new();
    // `timeout` is the deadline: a lease that kept draining would be killed (and its 137 would
    // fail the test); a lease that dies of a signal makes timeout die of the same one.
    let out = bash(
        &sandbox,
        "timeout -s KILL 5 lease run --scope a --mask -- yes | head -1; echo \"lease ${PIPESTATUS[*]}\"
         yes | head -1; echo \"bare ${PIPESTATUS[*]}\"
         timeout -s KILL 5 lease run --scope a --mask -- sh -c 'trap \"\" PIPE; exec yes' | head -1; echo \"lease ${PIPESTATUS[*]}\"
         sh -c 'trap \"\" PIPE; exec yes' | head -1; echo \"bare ${PIPESTATUS[*]}\"",
    )
    .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "y",
            "lease 141 0",
            "y",
            "bare 141 0",
            "y",
            "lease 1 0",
            "y",
            "bare 1 0"
        ],
        "{out:#?}"
    );
    // A command that ignores SIGPIPE gets EPIPE instead, and says so, as without lease.
    assert_eq!(out.stderr.matches("Broken pipe").count(), 2, "{out:#?}");
    sandbox.assert_all_revoked(2);
}

/// The command writes a piece, alternating streams, and waits for the test to see it before
/// it writes the next: each piece, partial lines included, must reach the reader while the
/// command waits, and the two streams (one pipe, as with `2>&1`) keep their order.
#[test]
fn mask_passes_on_partial_lines_at_once_and_keeps_the_order_of_the_two_streams() {
    let sandbox = Sandbox::new();
    let mut command = sandbox
        .sh("exec lease run --scope a --mask -- sh -c \"$0\" 2>&1")
        .arg(
            "printf 'out-part'; read go; printf 'err\\n' >&2; read go; printf ' rest\\n'; read go; \
             printf 'e2 ' >&2; read go; echo \"o2 $LEASE_TOKEN\"; read go; printf 'e3' >&2",
        )
        .command;
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut go = child.stdin.take().unwrap();
    let mut output = Bytes::from(child.stdout.take().unwrap());
    let mut expected = String::new();
    for piece in ["out-part", "err\n", " rest\n", "e2 ", "o2 ***\n", "e3"] {
        expected.push_str(piece);
        output.expect(&expected);
        assert_eq!(output.text(), expected);
        let _ = go.write_all(b"\n");
    }
    assert!(wait_for_exit(&mut child).success());
}

#[test]
fn mask_shows_a_prompt_without_a_newline_before_the_command_reads() {
    let sandbox = Sandbox::new();
    let mut command = sandbox
        .lease(["run", "--scope", "a", "--mask", "--", "sh", "-c"])
        .arg("printf 'Name: '; read name; echo \"hi $name\"")
        .command;
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let mut output = Bytes::from(child.stdout.take().unwrap());
    output.expect("Name: ");
    assert_eq!(output.text(), "Name: ", "nothing else before the answer");
    child.stdin.take().unwrap().write_all(b"bob\n").unwrap();
    output.expect("hi bob\n");
    assert!(wait_for_exit(&mut child).success());
}

#[test]
fn mask_shows_bash_read_p_prompt_on_a_terminal() {
    let sandbox = Sandbox::new();
    let pair = crate::harness::open_pty();
    let mut command = CommandBuilder::new(lease_bin());
    command.args([
        "run",
        "--scope",
        "a",
        "--mask",
        "--",
        "bash",
        "-c",
        "read -p 'Name: ' name; echo \"hi $name\"",
    ]);
    command.env_clear();
    command.env("PATH", std::env::var("PATH").unwrap_or_default());
    command.env("LEASE_STATE_DIR", sandbox.state_dir());
    command.env("HOME", sandbox.path("home"));
    command.env("XDG_CONFIG_HOME", sandbox.path("config"));
    command.env("TERM", "dumb");
    let mut child = pair.slave.spawn_command(command).unwrap();
    drop(pair.slave);
    let mut output = Bytes::from(pair.master.try_clone_reader().unwrap());
    let mut keys = pair.master.take_writer().unwrap();
    // bash writes the prompt to stderr, a pipe to lease, only because stdin is a terminal.
    output.expect("Name: ");
    keys.write_all(b"bob\r").unwrap();
    keys.flush().unwrap();
    output.expect("hi bob");
    assert!(child.wait().unwrap().success());
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

/// lease's own output to a reader that is already gone: the write fails (SIGPIPE is ignored,
/// as Rust's runtime leaves it) and lease ends quietly with 0, as a filter does, instead of
/// dying of SIGPIPE. The reading end is closed before lease starts, so the write always fails.
#[test]
fn lease_writing_to_a_closed_pipe_ends_quietly_instead_of_dying_of_sigpipe() {
    let sandbox = Sandbox::new();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut command = sandbox.lease(["completions", "bash"]).command;
    command.stdout(writer);
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// Started with standard descriptors closed, lease opens them on /dev/null before it opens
/// anything else (as Rust's runtime does), so that no file it opens, a record or the audit
/// trail, can become its standard output; the command inherits them the same way, so that no
/// file it opens becomes its standard input or output either.
#[test]
fn closed_standard_descriptors_are_opened_on_dev_null_for_lease_and_its_command() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .sh("exec 3>&2; exec lease run --scope a -- sh -c \
             'for fd in 0 1 2; do echo \"$fd $(readlink /proc/$$/fd/$fd)\" >&3; done' <&- >&- 2>&-")
        .run()
        .success();
    assert_eq!(out.stderr, "0 /dev/null\n1 /dev/null\n2 /dev/null\n");
    sandbox.assert_all_revoked(1);
}
