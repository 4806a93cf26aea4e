//! Policy: profiles, allowed scopes, nested leases that can only narrow, use budgets, what
//! happens at expiry, and renew.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use crate::harness::{Sandbox, readme_policy_example, wait_for_exit};

fn seconds_from_now(rfc3339: &str) -> u64 {
    let at = humantime::parse_rfc3339(rfc3339.trim()).unwrap();
    at.duration_since(SystemTime::now())
        .unwrap_or_default()
        .as_secs()
}

#[test]
fn a_profile_supplies_scope_ttl_env_and_uses_and_flags_override_it() {
    let sandbox = Sandbox::new();
    sandbox.write_config(&readme_policy_example());
    let show = "echo $LEASE_SCOPE; echo $LEASE_EXPIRES_AT; echo ${DEPLOY_TOKEN%%_*}; echo ${LEASE_TOKEN-none}";
    let out = sandbox
        .lease(["run", "--profile", "deploy", "--", "sh", "-c", show])
        .run()
        .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "deploy:staging");
    assert!(
        (118..=121).contains(&seconds_from_now(lines[1])),
        "{out:#?}"
    );
    assert_eq!(lines[2..], ["agt", "none"]);

    // Flags override the profile, one by one.
    let out = sandbox
        .lease([
            "run",
            "--profile",
            "deploy",
            "--ttl",
            "30",
            "--scope",
            "read:x",
            "--env",
            "T",
            "--",
        ])
        .arg("sh")
        .arg("-c")
        .arg("echo $LEASE_SCOPE; echo $LEASE_EXPIRES_AT; echo ${T%%_*}")
        .run()
        .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "read:x");
    assert!((28..=31).contains(&seconds_from_now(lines[1])), "{out:#?}");
    assert_eq!(lines[2], "agt");

    let issued = sandbox
        .lease(["issue", "--profile", "deploy", "--json"])
        .run()
        .success()
        .json();
    assert_eq!(issued["scope"], serde_json::json!(["deploy:staging"]));
    let listed = sandbox.lease(["list", "--json"]).run().success().json();
    assert_eq!(listed[0]["uses_left"], 1);
}

/// A config file that does not set max_ttl is not named as its source: the default is.
#[test]
fn a_ttl_past_the_default_max_ttl_names_the_default_not_a_file_without_it() {
    let sandbox = Sandbox::new();
    sandbox.write_config("default_ttl = \"1h\"\n");
    let out = sandbox
        .lease(["issue", "--scope", "a:b", "--ttl", "25h"])
        .run()
        .code_is(2)
        .one_error_line();
    assert_eq!(
        out.stderr,
        "lease: ttl 25h is too long: the default max_ttl allows at most 24h; ask for less with --ttl\n"
    );
}

#[test]
fn unknown_profiles_and_disallowed_scopes_and_ttls_are_refused_naming_the_file() {
    let sandbox = Sandbox::new();
    let path = sandbox.write_config(&readme_policy_example());
    let file = path.to_str().unwrap();
    sandbox
        .lease(["run", "--profile", "nope", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("unknown profile 'nope'")
        .stderr_has(file);
    // Worded as locally through a broker too: the refusal, not how it came back.
    let refused = sandbox
        .lease(["run", "--scope", "read:x,write:prod", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has(file);
    assert!(
        refused
            .stderr
            .starts_with("lease: scope 'write:prod' is not allowed"),
        "{refused:?}"
    );
    sandbox
        .lease(["run", "--scope", "*", "--", "true"])
        .run()
        .code_is(125)
        .stderr_has("'*'");
    sandbox
        .lease(["issue", "--scope", "write:prod"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("not allowed");
    sandbox
        .lease(["run", "--scope", "read:x", "--ttl", "13h", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("max_ttl")
        .stderr_has(file);
    // Within policy, all is well: read:* covers read:anything, even read:a*.
    sandbox
        .lease([
            "run",
            "--scope",
            "read:articles,read:a*,write:draft",
            "--",
            "true",
        ])
        .run()
        .success();
    assert_eq!(
        sandbox.records().len(),
        1,
        "only the allowed run left a lease"
    );
}

#[test]
fn a_profile_over_max_ttl_or_with_bad_values_is_an_error_naming_key_and_line() {
    let sandbox = Sandbox::new();
    sandbox.write_config("max_ttl = \"1m\"\n[profile.slow]\nscope = [\"a\"]\nttl = \"1h\"\n");
    sandbox
        .lease(["run", "--profile", "slow", "--", "true"])
        .run()
        .code_is(125)
        .stderr_has("max_ttl");
    sandbox.write_config("[profile.p]\nscope = [\"a\"]\nuses = 0\n");
    sandbox
        .lease(["list"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("profile.p.uses")
        .stderr_has("line 3");
    sandbox.write_config("[profile.p]\nscope = [\"a b\"]\n");
    sandbox
        .lease(["list"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("profile.p.scope")
        .stderr_has("line 2");
    sandbox.write_config("[profile.p]\ncolour = \"red\"\n");
    sandbox
        .lease(["list"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("colour")
        .stderr_has("line 2");
}

#[test]
fn a_nested_lease_may_narrow_but_never_widen() {
    let sandbox = Sandbox::new();
    let parent = sandbox.issue_json("read:*,write:draft", &[]);
    let token = parent["token"].as_str().unwrap();
    let child = sandbox
        .lease(["issue", "--scope", "read:articles", "--json"])
        .env("LEASE_TOKEN", token)
        .run()
        .success()
        .json();
    let entry = sandbox.listed(&child["id"]);
    assert_eq!(entry["parent"], parent["id"]);
    sandbox
        .lease(["issue", "--scope", "write:*"])
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("scope 'write:*' is not granted by the parent lease");
    sandbox
        .lease(["run", "--scope", "deploy:prod", "--", "true"])
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(125)
        .stderr_has("deploy:prod");
    // A nested run verifies its own narrower scope.
    sandbox
        .run_sh(
            "read:x",
            "lease verify read:x && ( lease verify write:draft 2>/dev/null; [ $? -eq 1 ] )",
        )
        .env("LEASE_TOKEN", token)
        .run()
        .success();
}

#[test]
fn a_nested_lease_expires_with_its_parent_and_says_so_only_when_verbose() {
    let sandbox = Sandbox::new();
    let parent = sandbox.issue_json("a", &["--ttl", "60"]);
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "a",
            "--ttl",
            "600",
            "--",
            "sh",
            "-c",
            "echo $LEASE_EXPIRES_AT",
        ])
        .env("LEASE_TOKEN", parent["token"].as_str().unwrap())
        .run()
        .success();
    assert_eq!(out.stdout.trim(), parent["expires_at"].as_str().unwrap());
    assert_eq!(out.stderr, "", "lease run is silent");
    let out = sandbox
        .lease(["-v", "run", "--scope", "a", "--ttl", "600", "--", "true"])
        .env("LEASE_TOKEN", parent["token"].as_str().unwrap())
        .run()
        .success();
    assert_eq!(
        out.stderr,
        format!(
            "lease: note: the lease expires at {}, with its parent lease {}\n",
            parent["expires_at"].as_str().unwrap(),
            parent["id"].as_str().unwrap()
        )
    );
}

#[test]
fn revoking_the_root_kills_a_three_level_chain_at_once() {
    let sandbox = Sandbox::new();
    let root = sandbox.issue_json("a:*", &[]);
    let issue_under = |parent: &serde_json::Value, scope: &str| {
        sandbox
            .lease(["issue", "--scope", scope, "--json"])
            .env("LEASE_TOKEN", parent["token"].as_str().unwrap())
            .run()
            .success()
            .json()
    };
    let child = issue_under(&root, "a:b*");
    let grandchild = issue_under(&child, "a:b:c");
    let token = grandchild["token"].as_str().unwrap();
    sandbox.verify(token, "a:b:c").success();
    sandbox
        .lease(["revoke", root["id"].as_str().unwrap()])
        .run()
        .success();
    sandbox
        .verify(token, "a:b:c")
        .code_is(1)
        .one_error_line()
        .stderr_has("denied: parent revoked");
    sandbox
        .verify(child["token"].as_str().unwrap(), "a:b")
        .code_is(1)
        .stderr_has("parent revoked");
    let out = sandbox
        .lease(["verify", "a:b:c", "--json"])
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(1)
        .json();
    assert_eq!(out["reason"], "parent revoked");
    // A child of a dead lease cannot be minted at all.
    sandbox
        .lease(["issue", "--scope", "a:b:c"])
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(2)
        .stderr_has("parent revoked");
}

#[test]
fn a_tree_of_a_hundred_leases_dies_with_its_root() {
    let sandbox = Sandbox::new();
    let root = sandbox.issue_json("t:*", &[]);
    let mut tokens = Vec::new();
    for i in 0..9 {
        let child = sandbox
            .lease(["issue", "--scope", &format!("t:{i}*"), "--json"])
            .env("LEASE_TOKEN", root["token"].as_str().unwrap())
            .run()
            .success()
            .json();
        for j in 0..10 {
            let grandchild = sandbox
                .lease(["issue", "--scope", &format!("t:{i}:{j}")])
                .env("LEASE_TOKEN", child["token"].as_str().unwrap())
                .run()
                .success();
            tokens.push((format!("t:{i}:{j}"), grandchild.stdout.trim().to_owned()));
        }
        tokens.push((
            format!("t:{i}:x"),
            child["token"].as_str().unwrap().to_owned(),
        ));
    }
    assert_eq!(sandbox.records().len(), 100);
    sandbox.verify(&tokens[0].1, &tokens[0].0).success();
    sandbox
        .lease(["revoke", root["id"].as_str().unwrap()])
        .run()
        .success();
    for (action, token) in &tokens {
        sandbox
            .verify(token, action)
            .code_is(1)
            .stderr_has("parent revoked");
    }
    assert_eq!(
        sandbox.lease(["list", "--json"]).run().success().json(),
        serde_json::json!([])
    );
}

#[test]
fn a_nested_lease_dies_when_the_parent_run_ends() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease([
            "run", "--scope", "a", "--", "lease", "issue", "--scope", "a",
        ])
        .run()
        .success();
    let child = out.stdout.trim();
    sandbox
        .verify(child, "a")
        .code_is(1)
        .one_error_line()
        .stderr_has("parent revoked");
}

#[test]
fn no_parent_is_refused_unless_orphans_are_allowed() {
    let sandbox = Sandbox::new();
    let parent = sandbox.issue("a");
    sandbox
        .lease(["issue", "--scope", "b", "--no-parent"])
        .env("LEASE_TOKEN", &parent)
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("allow_orphans");
    sandbox
        .lease(["run", "--scope", "b", "--no-parent", "--", "true"])
        .env("LEASE_TOKEN", &parent)
        .run()
        .code_is(125);
    if !crate::harness::broker_mode() {
        // `/dev/null` is no config: the fix does not suggest editing it.
        let out = sandbox
            .lease(["run", "--scope", "b", "--no-parent", "--", "true"])
            .env("LEASE_TOKEN", &parent)
            .env("LEASE_CONFIG", "/dev/null")
            .run()
            .code_is(125)
            .one_error_line();
        assert!(
            out.stderr
                .ends_with("set allow_orphans = true in the config file to allow it\n"),
            "{out:?}"
        );
    }
    sandbox.write_config("allow_orphans = true\n");
    let orphan = sandbox
        .lease(["issue", "--scope", "b", "--no-parent", "--json"])
        .env("LEASE_TOKEN", &parent)
        .run()
        .success()
        .json();
    let entry = sandbox.listed(&orphan["id"]);
    assert_eq!(entry["parent"], serde_json::Value::Null);
    // Allowed, a root lease does not depend on the lease in the environment: one used up (or
    // revoked) is refused a child, not a lease of its own.
    let spent = sandbox.issue_json("a", &["--uses", "1"]);
    let spent = spent["token"].as_str().unwrap();
    sandbox.verify(spent, "a").success();
    sandbox
        .lease(["run", "--scope", "b", "--no-parent", "--", "true"])
        .env("LEASE_TOKEN", spent)
        .run()
        .success();
    // Without a parent in the environment, --no-parent changes nothing.
    let plain = Sandbox::new();
    plain
        .lease(["issue", "--scope", "b", "--no-parent"])
        .run()
        .success();
}

#[test]
fn fifty_concurrent_verifies_of_a_three_use_token_grant_exactly_three() {
    let sandbox = Sandbox::new();
    let token = sandbox.issue_json("a", &["--uses", "3"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let verifies: Vec<_> = (0..50)
        .map(|_| {
            let mut cmd = sandbox.lease(["verify", "a"]).env("LEASE_TOKEN", &token);
            cmd.command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd.command.spawn().unwrap()
        })
        .collect();
    let codes: Vec<Option<i32>> = verifies
        .into_iter()
        .map(|mut c| wait_for_exit(&mut c).code())
        .collect();
    assert_eq!(
        codes.iter().filter(|c| **c == Some(0)).count(),
        3,
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| **c == Some(1)).count(),
        47,
        "{codes:?}"
    );
    sandbox
        .verify(&token, "a")
        .code_is(1)
        .one_error_line()
        .stderr_has("denied: used up");
    // Spent, it is no longer listed as active; `--all` shows it, and why.
    let listed = sandbox.lease(["list", "--json"]).run().success().json();
    assert_eq!(listed, serde_json::json!([]));
    let listed = sandbox
        .lease(["list", "--all", "--json"])
        .run()
        .success()
        .json();
    assert_eq!(listed[0]["uses_left"], 0);
    assert_eq!(listed[0]["state"], "used up");
}

#[test]
fn a_scope_budget_limits_that_scope_only() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["run", "--scope", "write:draft=2,read:*", "--", "sh", "-c"])
        .arg(
            "echo $LEASE_SCOPE; lease list --json; \
             lease verify write:draft && lease verify write:draft && ( lease verify write:draft 2>/dev/null; [ $? -eq 1 ] ) && \
             lease verify read:a && lease verify read:b && lease verify read:c && lease verify read:d && echo budgets-ok",
        )
        .run()
        .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "write:draft,read:*", "LEASE_SCOPE has no budgets");
    let listed: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(
        listed[0]["scope_uses_left"],
        serde_json::json!({"write:draft": 2})
    );
    assert_eq!(lines[2], "budgets-ok", "{out:#?}");
}

#[test]
fn a_child_spends_its_parents_budget_too() {
    let sandbox = Sandbox::new();
    let parent = sandbox.issue_json("a", &["--uses", "2"]);
    let child = sandbox
        .lease(["issue", "--scope", "a"])
        .env("LEASE_TOKEN", parent["token"].as_str().unwrap())
        .run()
        .success();
    let child = child.stdout.trim();
    sandbox.verify(child, "a").success();
    sandbox
        .verify(parent["token"].as_str().unwrap(), "a")
        .success();
    let parent_id = parent["id"].as_str().unwrap();
    sandbox.verify(child, "a").code_is(1).stderr_has(&format!(
        "denied: used up: its parent lease {parent_id} has no uses left"
    ));
}

#[test]
fn on_expiry_term_ends_the_command_near_the_ttl_with_124() {
    let sandbox = Sandbox::new();
    let started = Instant::now();
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "a",
            "--ttl",
            "1",
            "--on-expiry",
            "term",
            "--",
            "sleep",
            "30",
        ])
        .run()
        .code_is(124)
        .one_error_line()
        .stderr_has("expired: the command was ended with SIGTERM");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(4_500),
        "{took:?} {out:#?}"
    );
}

#[test]
fn on_expiry_term_kills_a_command_that_ignores_sigterm_after_the_grace() {
    let sandbox = Sandbox::new();
    let started = Instant::now();
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "a",
            "--ttl",
            "1",
            "--on-expiry",
            "term",
            "--grace",
            "1",
            "--receipt",
            "receipt.json",
            "--",
        ])
        .arg("sh")
        .arg("-c")
        .arg("trap '' TERM; exec sleep 30")
        .run()
        .code_is(124);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(5_500),
        "{took:?}"
    );
    // stderr, the trail and the receipt all say what ended it: SIGKILL, signal 9.
    let line = regex::Regex::new(
        r"^lease: lease [0-9a-f]{12} expired: the command was ended with SIGKILL \(--on-expiry term\)\n$",
    )
    .unwrap();
    assert!(line.is_match(&out.stderr), "{out:#?}");
    let log = sandbox.lease(["log", "--json"]).run().success().stdout;
    let event = |kind: &str| -> serde_json::Value {
        let found = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap());
        found
            .into_iter()
            .find(|e| e["event"] == kind)
            .unwrap_or_else(|| panic!("no {kind}: {log}"))
    };
    assert_eq!(event("child_exit")["signal"], 9, "{log}");
    assert_eq!(event("expired")["signal"], 9, "{log}");
    let receipt = std::fs::read_to_string(sandbox.path("receipt.json")).unwrap();
    let receipt: serde_json::Value = serde_json::from_str(&receipt).unwrap();
    assert_eq!(
        receipt["exit"],
        serde_json::json!({"code": null, "signal": 9, "ended_at_expiry": true})
    );
}

/// The command traps SIGTERM and prints how long after its lease's expiry it got it.
#[test]
fn on_expiry_signals_the_command_within_100_ms_of_the_moment_verify_denies() {
    let _machine = crate::harness::timing();
    let sandbox = Sandbox::new();
    let script = "\
import calendar, os, signal, time
expires = calendar.timegm(time.strptime(os.environ['LEASE_EXPIRES_AT'], '%Y-%m-%dT%H:%M:%SZ'))
def on_term(signal_number, frame):
    print('after_expiry_ms', (time.time() - expires) * 1000, flush=True)
    raise SystemExit(0)
signal.signal(signal.SIGTERM, on_term)
print('ready', flush=True)
while True:
    time.sleep(10)
";
    let run = |ttl: u64| {
        sandbox
            .lease(["run", "--scope", "a", "--on-expiry", "term", "--ttl"])
            .arg(ttl.to_string())
            .arg("--")
            .arg("python3")
            .arg("-c")
            .arg(script)
            .run()
            .code_is(124)
    };
    for ttl in [1, 2] {
        // On a loaded machine python may still be starting when a lease of a second or two
        // expires: without `ready` its handler was not in place, which says nothing about
        // lease. Then the same again with a longer TTL.
        let out = (0..4)
            .map(|attempt| run(ttl + 2 * attempt))
            .find(|out| out.stdout.starts_with("ready"))
            .unwrap_or_else(|| {
                panic!(
                    "python3 never started before its lease ran out ({ttl} s to {} s)",
                    ttl + 6
                )
            });
        let delay: f64 = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("after_expiry_ms "))
            .unwrap_or_else(|| panic!("no SIGTERM: {out:#?}"))
            .parse()
            .unwrap();
        // verify denies from `expires_at` on (`now >= expires_at`): SIGTERM comes after that,
        // and less than 100 ms after.
        assert!(
            (0.0..100.0).contains(&delay),
            "SIGTERM {delay} ms after the expiry: {out:#?}"
        );
        assert!(
            out.stderr
                .contains("the command was sent SIGTERM and exited"),
            "{out:#?}"
        );
    }
}

/// SIGALRM is the expiry timer's signal too. One that a process sends lease is the command's
/// (forwarded), and neither hastens nor delays the expiry nor cuts the grace short; the timer's
/// own never reaches the command. The command ignores SIGTERM, counts its SIGALRMs, and (in
/// one of two runs) sends lease one every 50 ms throughout.
#[test]
fn a_sigalrm_sent_to_lease_is_the_commands_and_moves_no_expiry() {
    let sandbox = Sandbox::new();
    let script = "\
import os, signal, time
got = 0
def on_alarm(signal_number, frame):
    global got
    got += 1
signal.signal(signal.SIGALRM, on_alarm)
signal.signal(signal.SIGTERM, lambda signal_number, frame: print('term', got, flush=True))
send = os.environ['SEND'] == '1'
while True:
    if send:
        os.kill(os.getppid(), signal.SIGALRM)
    time.sleep(0.05)
";
    std::thread::scope(|scope| {
        let runs: Vec<_> = ["0", "1"]
            .into_iter()
            .map(|send| {
                let sandbox = &sandbox;
                scope.spawn(move || {
                    let started = Instant::now();
                    let out = sandbox
                        .lease(["run", "--scope", "a", "--ttl", "3", "--on-expiry", "term"])
                        .args(["--grace", "1", "--", "python3", "-c", script])
                        .env("SEND", send)
                        .run()
                        .code_is(124);
                    (send, out, started.elapsed())
                })
            })
            .collect();
        for run in runs {
            let (send, out, took) = run.join().expect("a run");
            // SIGTERM at the expiry (3 s after the mint at least), SIGKILL a second later.
            assert!(
                took >= Duration::from_secs(4) && took < Duration::from_millis(7_500),
                "SEND={send}: {took:?} {out:#?}"
            );
            let out = out.stderr_has("the command was ended with SIGKILL");
            let terms: Vec<&str> = out.stdout.lines().collect();
            assert_eq!(terms.len(), 1, "SEND={send}: one SIGTERM: {out:#?}");
            let alarms: u32 = terms[0]
                .strip_prefix("term ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{out:#?}"));
            if send == "1" {
                assert!(alarms > 0, "no SIGALRM forwarded: {out:#?}");
            } else {
                assert_eq!(
                    alarms, 0,
                    "the timer's SIGALRM reached the command: {out:#?}"
                );
            }
        }
    });
}

#[test]
fn on_expiry_kill_and_keep() {
    let sandbox = Sandbox::new();
    sandbox
        .lease([
            "run",
            "--scope",
            "a",
            "--ttl",
            "1",
            "--on-expiry",
            "kill",
            "--",
            "sleep",
            "30",
        ])
        .run()
        .code_is(124)
        .stderr_has("SIGKILL");
    // keep (the default): the command runs on; only the token stops working.
    let out = sandbox
        .lease(["run", "--scope", "a", "--ttl", "1", "--", "sh", "-c"])
        .arg("sleep 2; lease verify a; echo verify=$?")
        .run()
        .success();
    assert!(
        out.stdout.contains("verify=1") && out.stderr.contains("expired"),
        "{out:#?}"
    );
    sandbox
        .lease(["run", "--scope", "a", "--on-expiry", "later", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line();
}

#[test]
fn renew_extends_within_max_ttl_and_refuses_beyond_it() {
    let sandbox = Sandbox::new();
    sandbox.write_config("max_ttl = 100\n");
    let out = sandbox
        .lease(["run", "--scope", "a", "--ttl", "40", "--", "sh", "-c"])
        .arg("echo $LEASE_EXPIRES_AT; lease renew --ttl 30; lease renew --ttl 60; lease renew --ttl 1; echo refused=$?")
        .run()
        .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    let at = |line: &str| humantime::parse_rfc3339(line).unwrap();
    let first = at(lines[0]);
    assert_eq!(at(lines[1]), first + Duration::from_secs(30), "{out:#?}");
    assert!(
        at(lines[2]) > at(lines[1]) && at(lines[2]) < first + Duration::from_secs(61),
        "capped: {out:#?}"
    );
    assert_eq!(lines[3], "refused=1", "{out:#?}");
    assert!(out.stderr.contains("extended only to"), "{out:#?}");
    assert!(
        out.stderr.contains("renew refused: max ttl reached"),
        "{out:#?}"
    );
    // On one stream, the note comes before the new expiry, through a broker as well.
    let out = sandbox
        .lease(["run", "--scope", "a", "--ttl", "40", "--", "sh", "-c"])
        .arg("lease renew --ttl 200 2>&1")
        .run()
        .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{out:#?}");
    assert!(lines[0].contains("extended only to"), "{out:#?}");
    assert!(humantime::parse_rfc3339(lines[1]).is_ok(), "{out:#?}");
}

#[test]
fn renew_refuses_revoked_expired_and_used_up_leases_and_needs_a_token() {
    let sandbox = Sandbox::new();
    let revoked = sandbox.issue_json("a", &[]);
    sandbox
        .lease(["revoke", revoked["id"].as_str().unwrap()])
        .run()
        .success();
    sandbox
        .lease(["renew"])
        .env("LEASE_TOKEN", revoked["token"].as_str().unwrap())
        .run()
        .code_is(1)
        .one_error_line()
        .stderr_has("renew refused: revoked");
    let expiring = sandbox.issue_json("a", &["--ttl", "1"]);
    crate::harness::wait_until_past(&expiring["expires_at"]);
    sandbox
        .lease(["renew"])
        .env("LEASE_TOKEN", expiring["token"].as_str().unwrap())
        .run()
        .code_is(1)
        .stderr_has("renew refused: expired");
    // Used up: it grants nothing however long it lives.
    let used = sandbox.issue_json("a", &["--uses", "1"]);
    let used = used["token"].as_str().unwrap();
    sandbox.verify(used, "a").success();
    sandbox
        .lease(["renew"])
        .env("LEASE_TOKEN", used)
        .run()
        .code_is(1)
        .one_error_line()
        .stderr_has("renew refused: used up: lease ");
    sandbox
        .lease(["renew"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("LEASE_TOKEN is not set");
}

#[test]
fn renew_moves_the_on_expiry_deadline() {
    let sandbox = Sandbox::new();
    let started = Instant::now();
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "a",
            "--ttl",
            "3",
            "--on-expiry",
            "kill",
            "--",
            "sh",
            "-c",
        ])
        // Killed at the first expiry (3 s) if the renewal did not move it; the sleep ends past
        // it, and long before the new one.
        .arg("lease renew --ttl 30 >/dev/null && sleep 4 && echo survived")
        .run();
    assert_eq!(
        out.code(),
        Some(0),
        "{out:#?} after {:?}",
        started.elapsed()
    );
    assert_eq!(out.stdout.trim(), "survived");
}

#[test]
fn durations_past_ten_years_are_refused_in_one_line_naming_the_flag_or_the_file() {
    let sandbox = Sandbox::new();
    let too_long = |text: &str| {
        format!("invalid duration '{text}': too long: at most 10 years (10y, 315576000 seconds)")
    };
    let token = sandbox.issue("a");
    let out = sandbox
        .lease(["renew", "--ttl", "18446744073709551615"])
        .env("LEASE_TOKEN", &token)
        .run()
        .code_is(2)
        .one_error_line();
    assert_eq!(
        out.stderr,
        format!(
            "lease: invalid value '18446744073709551615' for '--ttl <DURATION>': {}; see 'lease renew --help'\n",
            too_long("18446744073709551615")
        )
    );

    let path = sandbox.write_config("max_ttl = 18446744073709551615\n");
    let out = run_refused(&sandbox, "a");
    assert_eq!(
        out.stderr,
        format!(
            "lease: invalid config {}: line 1: max_ttl: {}\n",
            path.display(),
            too_long("18446744073709551615")
        )
    );

    let path = sandbox.write_config("max_ttl = \"100000000y\"\n");
    let out = sandbox
        .lease(["run", "--scope", "a", "--ttl", "99999999y", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line();
    assert_eq!(
        out.stderr,
        format!(
            "lease: invalid value '99999999y' for '--ttl <DURATION>': {}; see 'lease run --help'\n",
            too_long("99999999y")
        )
    );
    let out = sandbox
        .lease(["run", "--scope", "a", "--ttl", "1m", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line();
    assert_eq!(
        out.stderr,
        format!(
            "lease: invalid config {}: line 1: max_ttl: {}\n",
            path.display(),
            too_long("100000000y")
        )
    );
    assert!(sandbox.records().len() == 1, "only the issued lease exists");
}

#[test]
fn the_longest_ttl_and_the_longest_renewal_are_ten_years() {
    let sandbox = Sandbox::new();
    sandbox.write_config("max_ttl = \"10y\"\n");
    let out = sandbox
        .lease(["run", "--scope", "a", "--ttl", "10y", "--", "sh", "-c"])
        .arg("echo $LEASE_EXPIRES_AT; lease renew --ttl 10y; echo refused=$?")
        .run()
        .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    let years = seconds_from_now(lines[0]) as f64 / (365.25 * 86400.0);
    assert!((9.99..=10.0).contains(&years), "{out:#?}");
    assert_eq!(lines[1], "refused=1", "{out:#?}");
    assert!(
        out.stderr
            .starts_with("lease: renew refused: max ttl reached: lease "),
        "{out:#?}"
    );
    assert!(!out.stderr.contains("internal error"), "{out:#?}");
}

/// The largest lease the limits allow (256 scopes of 128 characters, each with the largest
/// budget) is recorded, granted, listed and revoked like any other: its record stays well under
/// the size past which a record is not read.
#[test]
fn the_largest_lease_the_limits_allow_is_granted_and_revoked() {
    let sandbox = Sandbox::new();
    let scope = |i: usize| format!("s{i:03}:{}", "x".repeat(123));
    let scopes: Vec<String> = (0..256)
        .map(|i| format!("{}={}", scope(i), u64::MAX))
        .collect();
    let scopes = scopes.join(",");
    let issued = sandbox.issue_json(&scopes, &["--uses", &u64::MAX.to_string()]);
    let token = issued["token"].as_str().expect("token");
    sandbox.verify(token, &scope(255)).success();
    if !crate::harness::broker_mode() {
        let size = std::fs::metadata(sandbox.record_path(&issued["id"]))
            .expect("the record")
            .len();
        assert!(size < 256 * 1024 / 3, "{size} bytes");
    }
    let out = sandbox
        .lease([
            "run",
            "--scope",
            &scopes,
            "--",
            "lease",
            "verify",
            &scope(0),
        ])
        .run()
        .success();
    assert_eq!(out.stderr, "", "{out:?}");
    let states = sandbox.states();
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(states.iter().any(|s| s == "revoked"), "{states:?}");
    assert!(states.iter().any(|s| s == "active"), "{states:?}");
}

/// `allowed_scopes = []` permits no scope at all, and says so.
#[test]
fn an_empty_allowed_scopes_permits_nothing_and_says_so() {
    let sandbox = Sandbox::new();
    let path = sandbox.write_config("allowed_scopes = []\n");
    let out = run_refused(&sandbox, "read:x");
    assert_eq!(
        out.stderr,
        format!(
            "lease: scope 'read:x' is not allowed: allowed_scopes in {} is empty, so it permits no scope\n",
            path.display()
        )
    );
    assert!(sandbox.records().is_empty());
}

/// `lease run --scope SCOPE -- true`, refused before it starts: 125 and one line.
fn run_refused(sandbox: &Sandbox, scope: &str) -> crate::harness::Out {
    sandbox
        .lease(["run", "--scope", scope, "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
}
