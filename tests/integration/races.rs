//! Races made deterministic: where a guarantee depends on two things not interleaving, a
//! debug-build hook or an exact count makes the bad interleaving happen (or be seen) every
//! time, instead of now and then.

use std::fs;
use std::process::Stdio;

use crate::harness::{Sandbox, wait_for_exit};

#[test]
fn two_verifies_held_at_the_charge_at_once_spend_a_one_use_budget_once() {
    if crate::harness::local_only("it uses the local store's debug charge barrier") {
        return;
    }
    // Debug builds hold each verify between reading its budget and paying it until a second
    // verify gets there too (or 2 s pass). Under the record's lock the second cannot arrive
    // before the first has paid; charged without the lock, or on a copy read before it, both
    // would pay for the same use.
    let sandbox = Sandbox::new();
    let issued = sandbox.issue_json("a", &["--uses", "1"]);
    let token = issued["token"].as_str().unwrap();
    let barrier = sandbox.path("barrier");
    fs::create_dir(&barrier).unwrap();
    let started = std::time::Instant::now();
    let mut verifies: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = sandbox
                .lease(["verify", "a"])
                .env("LEASE_TOKEN", token)
                .env("LEASE_DEBUG_CHARGE_BARRIER", &barrier);
            cmd.command.stdout(Stdio::null()).stderr(Stdio::null());
            cmd.command.spawn().unwrap()
        })
        .collect();
    let codes: Vec<_> = verifies
        .iter_mut()
        .map(|v| wait_for_exit(v).code())
        .collect();
    let granted = codes.iter().filter(|c| **c == Some(0)).count();
    assert_eq!(granted, 1, "exit codes {codes:?}");
    assert_eq!(
        sandbox.records()[issued["id"].as_str().unwrap()].get("uses_left"),
        Some(&toml::Value::Integer(0))
    );
    // The hold really happened, or this test proves nothing: one verify reached the charge
    // (the other found the budget spent, or gave up on the lock) and waited there the full
    // 2 s for a second that never came.
    assert_eq!(fs::read_dir(&barrier).unwrap().count(), 1);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Runs `cmd` to its end and returns how many write-type system calls it made (`syscw` in
/// /proc/PID/io, read while the exited process is still a zombie, before it is reaped).
fn writes_made_by(cmd: crate::harness::Cmd) -> u64 {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    let mut command = cmd.command;
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = command.spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let deadline = std::time::Instant::now() + crate::harness::PATIENCE;
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    while waitid(Id::Pid(pid), flags).unwrap() == WaitStatus::StillAlive {
        assert!(std::time::Instant::now() < deadline, "{pid} did not exit");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let io = fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let writes = io
        .lines()
        .find_map(|l| l.strip_prefix("syscw: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(wait_for_exit(&mut child).code(), Some(0));
    writes
}

#[test]
fn an_audit_line_is_written_with_a_single_write() {
    if crate::harness::local_only("it traces the local trail's writes") {
        return;
    }
    // O_APPEND makes one write() land whole after every other writer's; two writes could be
    // split by another process's line. A granted verify of a lease without budgets writes
    // nothing but its one audit line, so it must make exactly one write system call.
    let sandbox = Sandbox::new();
    let token = sandbox.issue("a");
    let log = sandbox.state_dir().join("audit.jsonl");
    let lines_before = fs::read_to_string(&log).unwrap().lines().count();
    let verify = sandbox.lease(["verify", "a"]).env("LEASE_TOKEN", &token);
    assert_eq!(writes_made_by(verify), 1, "write calls of a granted verify");
    let lines = fs::read_to_string(&log).unwrap();
    assert_eq!(lines.lines().count(), lines_before + 1);
    assert!(
        lines
            .lines()
            .last()
            .unwrap()
            .contains(r#""event":"granted""#),
        "{lines}"
    );
}

/// Attaches strace to process `pid`, recording its signal-sending system calls in `log`, and
/// returns strace once it is attached; `None` if strace cannot run here.
fn trace_signals_sent_by(pid: i32, log: &std::path::Path) -> Option<std::process::Child> {
    let tracer = std::process::Command::new("strace")
        .args([
            "-qq",
            "-e",
            "trace=kill,tkill,tgkill,pidfd_send_signal,rt_sigqueueinfo",
        ])
        .arg("-o")
        .arg(log)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + crate::harness::PATIENCE;
    let status = format!("/proc/{pid}/status");
    loop {
        let text = fs::read_to_string(&status).ok()?;
        if !text.contains("TracerPid:\t0\n") {
            return Some(tracer);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn each_forwarded_signal_is_sent_to_the_child_by_exactly_one_system_call() {
    // Two deliveries of one signal sent back to back merge at the child, so counting what the
    // child receives cannot tell one send from two: count lease's sends instead.
    use nix::sys::signal::Signal;
    let sandbox = Sandbox::new();
    let mut args = vec!["run", "--scope", "a", "--", "python3", "-u"];
    let script = crate::harness::fixture("sigcount.py");
    args.push(script.to_str().unwrap());
    args.extend([
        "USR2", "INT", "TERM", "HUP", "QUIT", "USR1", "ALRM", "VTALRM", "PROF", "PWR", "USR2",
    ]);
    let mut run = sandbox.lease(&args).start();
    run.lines.expect("ready");
    let log = sandbox.path("strace.log");
    let Some(mut tracer) = trace_signals_sent_by(run.pid(), &log) else {
        crate::harness::kill_pid(run.pid());
        run.wait();
        crate::harness::skip("no-strace", "strace cannot attach to a process here");
        return;
    };
    let signals = [
        (Signal::SIGINT, "INT"),
        (Signal::SIGTERM, "TERM"),
        (Signal::SIGHUP, "HUP"),
        (Signal::SIGQUIT, "QUIT"),
        (Signal::SIGUSR1, "USR1"),
        (Signal::SIGALRM, "ALRM"),
        (Signal::SIGVTALRM, "VTALRM"),
        (Signal::SIGPROF, "PROF"),
        (Signal::SIGPWR, "PWR"),
        (Signal::SIGUSR2, "USR2"),
    ];
    for (signal, name) in signals {
        run.signal(signal);
        run.lines.expect(&format!("got {name} 1"));
    }
    assert_eq!(run.wait().code(), Some(0));
    wait_for_exit(&mut tracer);
    let trace = fs::read_to_string(&log).unwrap();
    for (_, name) in signals {
        let sends = trace
            .lines()
            .filter(|l| l.contains(&format!(", SIG{name})")))
            .count();
        assert_eq!(sends, 1, "SIG{name} sent {sends} times:\n{trace}");
    }
}
