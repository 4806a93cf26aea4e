//! Trying hard to break the guarantees: wrappers killed at random moments, and hundreds of
//! concurrent runs and issues against one store.

use std::fs;
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::harness::{Sandbox, live_children_of, wait_for_exit};

fn spawn_quiet(mut cmd: crate::harness::Cmd) -> Child {
    cmd.command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.command.spawn().unwrap()
}

#[test]
fn kill_storm_leaves_no_live_token_no_child_and_a_store_gc_can_clean() {
    if crate::harness::local_only("it kills wrappers mid-write of the local store") {
        return;
    }
    let _machine = crate::harness::loading();
    let sandbox = Sandbox::new();
    // Each wrapper is killed with SIGKILL at a random moment in its first 50 ms: before, during
    // or after minting, spawning and recording. Spawning and killing interleave, so each kill
    // lands at its own wrapper's moment.
    let mut pending: Vec<(Instant, Child)> = Vec::new();
    let kill_due = |pending: &mut Vec<(Instant, Child)>, all: bool| {
        pending.sort_by_key(|(at, _)| *at);
        while let Some((at, _)) = pending.first() {
            match at.checked_duration_since(Instant::now()) {
                Some(wait) if all => thread::sleep(wait),
                Some(_) => break,
                None => {}
            }
            let (_, mut child) = pending.remove(0);
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = kill(pid, Signal::SIGKILL);
            wait_for_exit(&mut child);
        }
    };
    for _ in 0..200 {
        let child = spawn_quiet(sandbox.lease(["run", "--scope", "storm", "--", "sleep", "60"]));
        let delay = Duration::from_micros(rand::random_range(0..50_000));
        pending.push((Instant::now() + delay, child));
        kill_due(&mut pending, false);
    }
    kill_due(&mut pending, true);
    let minted = sandbox.records().len();
    assert!(
        minted > 0,
        "no wrapper lived long enough to mint: the storm tested nothing"
    );

    // The store reads cleanly: no record is torn, and none of them is active.
    let listed = sandbox.lease(["list", "--all", "--json"]).run().success();
    assert!(listed.stderr.is_empty(), "{listed:#?}");
    let all = listed.json();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .all(|l| l["state"] == "owner gone"),
        "{all}"
    );
    assert_eq!(
        sandbox.lease(["list", "--json"]).run().success().json(),
        serde_json::json!([])
    );

    // gc removes every record and every temporary file the killed writers left; the empty
    // spare file a run makes for the next write stays.
    sandbox.lease(["gc"]).run().success();
    let left: Vec<_> = fs::read_dir(sandbox.leases_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| name != ".spare")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");

    // No child outlives its killed wrapper for more than 2 s (PR_SET_PDEATHSIG).
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut alive = live_children_of(&sandbox);
    while !alive.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
        alive = live_children_of(&sandbox);
    }
    assert!(alive.is_empty(), "children still alive: {alive:?}");

    sandbox
        .lease(["run", "--scope", "after", "--", "lease", "verify", "after"])
        .run()
        .success();
}

#[test]
fn two_hundred_concurrent_runs_and_issues_lose_nothing() {
    let _machine = crate::harness::loading();
    let sandbox = Sandbox::new();
    let runs: Vec<Child> = (0..200)
        .map(|i| {
            let script = format!(
                "lease verify job:{i} && ( lease verify job:{} 2>/dev/null; [ $? -eq 1 ] )",
                i + 1
            );
            spawn_quiet(sandbox.run_sh(&format!("job:{i}"), &script))
        })
        .collect();
    let issues: Vec<Child> = (0..200)
        .map(|i| {
            let mut cmd = sandbox.lease(["issue", "--scope", &format!("batch:{i}")]);
            cmd.command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null());
            cmd.command.spawn().unwrap()
        })
        .collect();
    for (i, mut run) in runs.into_iter().enumerate() {
        assert_eq!(wait_for_exit(&mut run).code(), Some(0), "run {i}");
    }
    let mut tokens = Vec::new();
    for (i, issue) in issues.into_iter().enumerate() {
        let out = issue.wait_with_output().unwrap();
        assert!(out.status.success(), "issue {i}");
        tokens.push((i, String::from_utf8(out.stdout).unwrap().trim().to_owned()));
    }

    let records = sandbox.records();
    assert_eq!(records.len(), 400, "no record lost");
    let revoked = records
        .values()
        .filter(|r| r["state"].as_str() == Some("revoked"))
        .count();
    assert_eq!(revoked, 200, "every run's lease was revoked");
    for (i, token) in tokens.iter().step_by(20) {
        sandbox
            .lease(["verify", &format!("batch:{i}")])
            .env("LEASE_TOKEN", token)
            .run()
            .success();
    }
    let active = sandbox.lease(["list", "--json"]).run().success().json();
    assert_eq!(
        active.as_array().unwrap().len(),
        200,
        "the issued leases are the active ones"
    );
    sandbox.lease(["revoke", "--all"]).run().success();
    assert_eq!(
        sandbox.lease(["list", "--json"]).run().success().json(),
        serde_json::json!([])
    );
}
