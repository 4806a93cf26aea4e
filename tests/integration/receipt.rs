//! `lease run --receipt FILE`: what a run hands back (its lease, every decision, its exit),
//! and a receipt that cannot be written stopping the run before it starts.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use crate::harness::Sandbox;

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
    assert_eq!(json["decisions_complete"], true);
    assert!(json["duration_ms"].as_u64().is_some());
    assert_eq!(
        std::fs::metadata(&receipt).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// A receipt is 0600 whatever the umask: one that takes the owner's bits made it 0400 or
/// 0000, one that leaves others theirs (0002) would not widen it either.
#[test]
fn a_receipt_is_private_whatever_the_umask() {
    let sandbox = Sandbox::new();
    for umask in ["777", "222", "077", "002"] {
        let receipt = sandbox.path(&format!("receipt-{umask}.json"));
        sandbox
            .sh(&format!(
                "umask {umask} && \"$0\" run --scope a --receipt '{}' -- true",
                receipt.display()
            ))
            .arg(crate::harness::lease_bin())
            .run()
            .success();
        assert_eq!(
            std::fs::metadata(&receipt).unwrap().permissions().mode() & 0o7777,
            0o600,
            "umask {umask}"
        );
    }
}

/// A trail rotated past the run's start has lost some of its decisions: the receipt says so
/// (`decisions_complete: false`, and one line on stderr), and so does `suggest`, rather than
/// passing a part for the whole.
#[test]
fn a_receipt_and_a_suggestion_say_when_the_trail_no_longer_reaches_the_runs_start() {
    let sandbox = Sandbox::new();
    sandbox.write_config("audit_max_bytes = 1024\n");
    let receipt = sandbox.path("receipt.json");
    let out = sandbox
        .lease(["run", "--scope", "read:*", "--receipt", receipt.to_str().unwrap(), "--", "sh", "-c"])
        .arg("for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do lease verify read:$i; done")
        .run()
        .success()
        .one_error_line();
    assert!(
        out.stderr.contains("may lack decisions of the run: the audit trail does not reach back to the lease's start"),
        "{out:?}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&receipt).unwrap()).unwrap();
    assert_eq!(json["decisions_complete"], false, "{json}");
    let kept = crate::harness::receipt_decisions(&json).len();
    assert!(kept < 20, "{kept} decisions: the trail was not rotated");
    let id = json["lease"]["id"].as_str().expect("id");
    let suggested = sandbox
        .lease(["suggest", "--json", id])
        .run()
        .success()
        .one_error_line();
    assert!(
        suggested.stderr.contains("may miss actions"),
        "{suggested:?}"
    );
    assert_eq!(suggested.json()["complete"], false);
}

/// A command that cannot be run still leaves the receipt its CI step collects: the lease was
/// minted and revoked, and the exit (127, 126) says why nothing used it.
#[test]
fn a_command_that_cannot_be_run_still_leaves_its_receipt() {
    let sandbox = Sandbox::new();
    let not_executable = sandbox.path("data.txt");
    std::fs::write(&not_executable, "data").unwrap();
    for (program, code) in [
        ("/nonexistent/program", 127),
        (not_executable.to_str().unwrap(), 126),
    ] {
        let receipt = sandbox.path(&format!("receipt-{code}.json"));
        sandbox
            .lease([
                "run",
                "--scope",
                "read:a",
                "--receipt",
                receipt.to_str().unwrap(),
                "--",
                program,
            ])
            .run()
            .code_is(code)
            .one_error_line();
        let text = std::fs::read_to_string(&receipt).expect("a receipt");
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json["lease"]["scope"],
            serde_json::json!(["read:a"]),
            "{json}"
        );
        assert_eq!(json["exit"]["code"], code, "{json}");
        assert_eq!(json["exit"]["signal"], serde_json::Value::Null, "{json}");
        assert_eq!(json["decisions"], serde_json::json!([]), "{json}");
    }
    assert!(
        sandbox.states().iter().all(|s| s == "revoked"),
        "{:?}",
        sandbox.states()
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
        // A path that names a directory, there or not: the temporary file would be written
        // above it, and the receipt fail to take its name after the command ran.
        (
            format!("{}/new/", sandbox.path("").display()),
            "the path names a directory, not a file",
        ),
        (
            format!("{}/..", sandbox.path("").display()),
            "the path names a directory, not a file",
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
        let said = format!("lease: cannot write the receipt {receipt}: ");
        assert!(
            out.stderr.starts_with(why) || out.stderr.starts_with(&format!("{said}{why}")),
            "{out:#?}"
        );
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

/// A receipt aimed into the state dir (over the trail, or beside the records) would replace
/// lease's own files: refused before anything is minted, the trail untouched.
#[test]
fn a_receipt_inside_the_state_dir_is_refused() {
    if crate::harness::local_only("a run through a broker has no local state dir to protect") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.issue("a");
    let trail = sandbox.state_dir().join("audit.jsonl");
    let before = std::fs::read(&trail).expect("trail");
    for receipt in [trail.clone(), sandbox.state_dir().join("leases/r.json")] {
        let receipt = receipt.display().to_string();
        let out = sandbox
            .lease(["run", "--scope", "a", "--receipt", &receipt, "--", "true"])
            .run()
            .code_is(125)
            .one_error_line();
        assert!(out.stderr.contains("is inside the state dir"), "{out:#?}");
    }
    assert_eq!(std::fs::read(&trail).expect("trail"), before);
    assert_eq!(sandbox.records().len(), 1, "nothing more is minted");
}
