//! The shipped examples, run for real: make, sh and python3.

use std::path::PathBuf;

use crate::harness::Sandbox;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[test]
fn makefile_runs_leased_targets_under_make_j() {
    let sandbox = Sandbox::new();
    let makefile = example("Makefile");
    let out = sandbox
        .command("make")
        .arg("-j4")
        .arg("-f")
        .arg(&makefile)
        .run()
        .success();
    for line in ["fetch: lease", "build: wrote a draft", "publish: lease"] {
        assert!(out.stdout.contains(line), "{line}: {out:#?}");
    }
    let records = sandbox.records();
    assert_eq!(records.len(), 3);
    assert!(sandbox.all_revoked());
}

#[test]
fn agent_wrapper_passes_scope_and_exit_status() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .command(example("agent.sh"))
        .arg("sh")
        .arg("-c")
        .arg("echo $LEASE_SCOPE; lease verify write:draft && exit 7")
        .env("AGENT_SCOPE", "read:x,write:draft")
        .run()
        .code_is(7);
    assert_eq!(out.stdout.trim(), "read:x,write:draft");
}

#[test]
fn gate_runs_granted_actions_and_refuses_others() {
    let sandbox = Sandbox::new();
    let gate = example("gate.py");
    let script = format!(
        "{g} write:draft echo ran-granted; {g} write:prod echo ran-denied; echo denied=$?",
        g = gate.display()
    );
    let out = sandbox
        .lease(["run", "--scope", "write:draft", "--", "sh", "-c", &script])
        .run()
        .success();
    assert!(out.stdout.contains("ran-granted"), "{out:#?}");
    assert!(!out.stdout.contains("ran-denied"), "{out:#?}");
    assert!(out.stdout.contains("denied=1"), "{out:#?}");
    assert!(
        out.stderr.contains("write:prod refused: out of scope"),
        "{out:#?}"
    );
    // Outside any lease there is no token: lease cannot decide, and the gate says so.
    sandbox
        .command(gate)
        .arg("read:x")
        .arg("true")
        .run()
        .code_is(2);
}
