//! A command never outlives a wrapper killed with SIGKILL, whatever instant the kill lands at:
//! before the fork, between fork and exec, or once the command runs (Linux:
//! `PR_SET_PDEATHSIG`, armed in the child with lease's signal handlers already removed).

use std::fs;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::{
    PATIENCE, Sandbox, kill_pid, live_children_of, parent_of, process_state, program_of,
    wait_for_exit,
};

/// Pids of the live children of process `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// Waits until `lease` (a running wrapper) has started a child, and returns the child's pid.
fn child_of(lease: i32) -> i32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let [child] = children_of(lease)[..] {
            return child;
        }
        assert!(Instant::now() < deadline, "lease {lease} started no child");
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until process `pid` is gone (or a zombie). Fails the test if it lives on: running
/// `program` means it got past exec after its wrapper died, which is what must never happen.
#[track_caller]
fn assert_dies(pid: i32, program: &str) {
    let deadline = Instant::now() + PATIENCE;
    while process_state(pid).is_some_and(|state| state != 'Z') {
        let survived = program_of(pid).as_deref() == Some(program);
        if survived || Instant::now() > deadline {
            kill_pid(pid);
            panic!("child {pid} outlived its killed wrapper (running {program}: {survived})");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_wrapper_killed_between_the_childs_fork_and_exec_takes_the_child_with_it() {
    // A debug-build hook holds the child after the death signal is armed, before exec, until
    // its parent is gone: the kill lands in that window every time.
    let sandbox = Sandbox::new();
    let mut run = sandbox
        .lease(["run", "--scope", "a", "--", "sleep", "30"])
        .env("LEASE_DEBUG_HOLD_BEFORE_EXEC", "1")
        .start();
    let child = child_of(run.pid());
    assert_eq!(
        program_of(child).as_deref(),
        Some("lease"),
        "not yet exec'd"
    );
    run.signal(Signal::SIGKILL);
    run.wait();
    assert_dies(child, "sleep");
}

/// A wrapper killed (SIGKILL, a supervisor's last word): its command gets SIGTERM, the signal
/// a command can clean up on, not SIGKILL.
#[test]
fn a_killed_wrapper_gives_its_command_sigterm_to_clean_up_on() {
    let sandbox = Sandbox::new();
    let mut run = sandbox
        .run_sh(
            "a",
            "trap 'echo cleaned > cleaned; exit 0' TERM; echo ready; while :; do sleep 0.05; done",
        )
        .start();
    run.lines.expect("ready");
    run.signal(Signal::SIGKILL);
    run.wait();
    assert_eq!(
        crate::harness::wait_for_file(&sandbox.path("cleaned")).trim(),
        "cleaned"
    );
}

#[test]
fn a_wrapper_started_with_sigterm_ignored_still_takes_its_child_with_it() {
    // The child inherits SIGTERM ignored, so the death signal must be one it cannot ignore.
    let sandbox = Sandbox::new();
    let mut run = sandbox
        .sh("trap '' TERM; exec lease run --scope a -- sh -c 'echo $$; exec sleep 30'")
        .start();
    let child: i32 = run
        .lines
        .expect_that("a pid", |l| l.parse::<i32>().is_ok())
        .parse()
        .unwrap();
    while program_of(child).as_deref() != Some("sleep") {
        assert!(process_state(child).is_some(), "child {child} is gone");
        thread::sleep(Duration::from_millis(2));
    }
    run.signal(Signal::SIGKILL);
    run.wait();
    assert_dies(child, "no program: any survivor is one");
}

/// Two busy loops, one per core, for as long as it lives.
struct CpuLoad(Vec<Child>);

impl CpuLoad {
    fn start() -> CpuLoad {
        let spin = || {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        };
        CpuLoad(vec![spin(), spin()])
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `lease run --scope race -- sleep 30`, its output discarded. `sleep` is found at the end of
/// a long PATH, as on many a developer's machine: the child looks for it between arming the
/// death signal and its successful exec, which widens that window to about a millisecond.
fn start_quiet(sandbox: &Sandbox) -> Child {
    let missing: Vec<String> = (0..200)
        .map(|i| sandbox.path(&format!("missing/{i}")).display().to_string())
        .collect();
    let path = format!("{}:{}", missing.join(":"), std::env::var("PATH").unwrap());
    let mut cmd = sandbox
        .lease(["run", "--scope", "race", "--", "sleep", "30"])
        .env("PATH", path);
    cmd.command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.command.spawn().unwrap()
}

/// How long a wrapper takes, on this machine under this load, to start its child: the median
/// of a few runs.
fn time_to_spawn(sandbox: &Sandbox) -> Duration {
    let mut times: Vec<Duration> = (0..9)
        .map(|_| {
            let started = Instant::now();
            let mut lease = start_quiet(sandbox);
            let pid = i32::try_from(lease.id()).unwrap();
            child_of(pid);
            let took = started.elapsed();
            let _ = lease.kill();
            wait_for_exit(&mut lease);
            took
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

#[test]
fn three_hundred_wrappers_killed_around_the_spawn_under_load_leave_no_child() {
    if crate::harness::local_only("it counts the local store's records around the spawn") {
        return;
    }
    let _machine = crate::harness::loading();
    let sandbox = Sandbox::new();
    let load = CpuLoad::start();
    // Each wrapper is killed with SIGKILL at a random moment between its start and twice the
    // time it usually takes to start its child: the kills spread over minting, the fork, the
    // window before exec, and the command's first instants.
    let spread = time_to_spawn(&sandbox) * 2;
    for _ in 0..300 {
        let mut lease = start_quiet(&sandbox);
        thread::sleep(spread.mul_f64(rand::random::<f64>()));
        let _ = lease.kill();
        wait_for_exit(&mut lease);
    }
    drop(load);
    // A child whose death signal is on its way is gone within moments; a survivor is not.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut alive = live_children_of(&sandbox);
    while !alive.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        alive = live_children_of(&sandbox);
    }
    for &pid in &alive {
        kill_pid(pid);
    }
    assert_eq!(
        alive.len(),
        0,
        "children outlived their wrappers (kills spread over {spread:?}): {alive:?}"
    );
}
