//! `issue`, `list`, `revoke` and `gc`.

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use crate::harness::{Sandbox, kill_pid, wait_until_past};

#[test]
fn issue_prints_the_token_alone_or_json() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["issue", "--scope", "deploy:staging"])
        .run()
        .success();
    assert!(
        out.stdout.starts_with("agt_") && out.stdout.ends_with('\n'),
        "{out:#?}"
    );
    assert_eq!(out.stdout.lines().count(), 1);
    assert!(out.stderr.is_empty());

    let json = sandbox
        .lease([
            "issue",
            "--scope",
            "read:*,write:draft",
            "--ttl",
            "1h",
            "--json",
        ])
        .run()
        .success()
        .json();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4, "{json}");
    assert!(json["token"].as_str().unwrap().starts_with("agt_"));
    assert_eq!(json["scope"], serde_json::json!(["read:*", "write:draft"]));
    let expires = humantime::parse_rfc3339(json["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.duration_since(SystemTime::now()).unwrap();
    assert!(
        left > Duration::from_secs(3590) && left <= Duration::from_secs(3601),
        "{left:?}"
    );
    assert_eq!(json["id"].as_str().unwrap().len(), 12);
}

/// With its standard output closed, `issue` could show the new token to no one: it mints
/// nothing and says so.
#[test]
fn issue_with_its_output_closed_mints_nothing() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .sh("lease issue --scope a >&-; echo \"status=$?\"")
        .run()
        .success();
    assert_eq!(out.stdout, "status=2\n", "{out:#?}");
    assert!(out.stderr.contains("standard output is closed"), "{out:#?}");
    let listed = sandbox.lease(["list", "--all", "--json"]).run().success();
    assert_eq!(listed.stdout.trim(), "[]");
}

#[test]
fn issue_rejects_bad_arguments_with_2() {
    let sandbox = Sandbox::new();
    for args in [
        &["issue"][..],
        &["issue", "--scope", "a b"],
        &["issue", "--scope", "a", "--ttl", "0"],
    ] {
        sandbox.lease(args).run().code_is(2).one_error_line();
    }
    assert!(sandbox.records().is_empty());
}

#[test]
fn list_shows_active_leases_and_all_adds_ended_ones() {
    let sandbox = Sandbox::new();
    let detached = sandbox.issue_json("a", &[]);
    let gone = sandbox.issue_json("b", &[]);
    sandbox
        .lease(["revoke", gone["id"].as_str().unwrap()])
        .run()
        .success();
    let mut run = sandbox
        .run_sh("c:1,c:2", "echo ready; exec sleep 60")
        .start();
    run.lines.expect("ready");

    let active = sandbox.lease(["list", "--json"]).run().success().json();
    let active = active.as_array().unwrap();
    assert_eq!(active.len(), 2, "{active:?}");
    let by_id = |id: &serde_json::Value| active.iter().find(|e| e["id"] == *id).unwrap().clone();
    let entry = by_id(&detached["id"]);
    assert_eq!(entry["id"], detached["id"]);
    assert_eq!(entry["scope"], serde_json::json!(["a"]));
    assert_eq!(entry["pid"], serde_json::Value::Null);
    assert_eq!(entry["command"], serde_json::Value::Null);
    assert_eq!(entry["state"], "active");
    let keys: Vec<&String> = entry.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "command",
            "expires_at",
            "id",
            "issued_at",
            "parent",
            "pid",
            "scope",
            "scope_uses_left",
            "state",
            "uses_left"
        ]
    );
    assert_eq!(entry["parent"], serde_json::Value::Null);
    assert_eq!(entry["uses_left"], serde_json::Value::Null);
    assert_eq!(entry["scope_uses_left"], serde_json::json!({}));
    let owned = active.iter().find(|e| e["id"] != detached["id"]).unwrap();
    assert_eq!(owned["pid"], run.pid());
    assert_eq!(owned["command"], "sh");
    assert_eq!(owned["scope"], serde_json::json!(["c:1", "c:2"]));

    let all = sandbox
        .lease(["list", "--all", "--json"])
        .run()
        .success()
        .json();
    let states: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 3);
    assert!(states.contains(&"revoked"));

    let table = sandbox.lease(["list"]).run().success().stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("EXPIRES IN"),
        "{table}"
    );
    let row = lines
        .iter()
        .find(|l| l.contains(detached["id"].as_str().unwrap()))
        .unwrap();
    assert!(row.contains("10m") || row.contains("9m 5"), "{table}");
    assert!(row.contains("(detached)"), "{table}");

    run.signal(Signal::SIGTERM);
    run.wait();
}

/// A lease whose every use is spent grants nothing, as `status` and `verify` say: `list` does
/// not show it as active, and `list --all` says `used up`, for it and for a lease nested in it.
#[test]
fn a_used_up_lease_is_not_listed_as_active() {
    let sandbox = Sandbox::new();
    let spent = sandbox.issue_json("x:y=1", &[]);
    let token = spent["token"].as_str().unwrap();
    let child = sandbox
        .lease(["issue", "--scope", "x:y", "--json"])
        .env("LEASE_TOKEN", token)
        .run()
        .success()
        .json();
    let other = sandbox.issue_json("x:y=2", &[]);
    sandbox.verify(token, "x:y").success();
    sandbox
        .verify(child["token"].as_str().unwrap(), "x:y")
        .code_is(1)
        .stderr_has("used up");
    let active = sandbox.lease(["list", "--json"]).run().success().json();
    let ids: Vec<&serde_json::Value> = active
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["id"])
        .collect();
    assert_eq!(ids, [&other["id"]], "{active}");
    let all = sandbox
        .lease(["list", "--all", "--json"])
        .run()
        .success()
        .json();
    for lease in [&spent, &child] {
        let entry = all
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == lease["id"])
            .unwrap();
        assert_eq!(entry["state"], "used up", "{entry}");
    }
}

#[test]
fn list_of_an_empty_store_prints_nothing_or_an_empty_array() {
    let sandbox = Sandbox::new();
    assert_eq!(sandbox.lease(["list"]).run().success().stdout, "");
    assert_eq!(
        sandbox.lease(["list", "--json"]).run().success().json(),
        serde_json::json!([])
    );
}

/// Writes `depth` detached leases as record files, each the parent of the next, the root first;
/// the one at `revoked` is revoked. Returns their ids, root first.
fn write_chain(sandbox: &Sandbox, depth: usize, revoked: usize) -> Vec<String> {
    let now = SystemTime::now();
    let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let (issued, expires) = (at(now), at(now + Duration::from_secs(3600)));
    let mut records = Vec::new();
    let ids: Vec<String> = (1..=depth).map(|n| format!("{n:012x}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let mut text = format!(
            "id = \"{id}\"\ntoken_sha256 = \"{id}{}\"\nscope = [\"a\"]\nissued_at = \"{issued}\"\nexpires_at = \"{expires}\"\n",
            "0".repeat(52)
        );
        if n == revoked {
            text.push_str(&format!("state = \"revoked\"\nrevoked_at = \"{issued}\"\n"));
        } else {
            text.push_str("state = \"active\"\n");
        }
        if let Some(parent) = n.checked_sub(1) {
            text.push_str(&format!("parent = \"{}\"\n", ids[parent]));
        }
        records.push((id.clone(), text));
    }
    sandbox.put_records(&records);
    ids
}

#[test]
fn list_of_a_three_thousand_deep_chain_is_quick_and_right() {
    let sandbox = Sandbox::new();
    let (depth, revoked) = (3000, 2000);
    let ids = write_chain(&sandbox, depth, revoked);
    let started = Instant::now();
    let out = sandbox.lease(["list", "--all", "--json"]).run().success();
    let took = started.elapsed();
    let listed = out.json();
    let states: BTreeMap<&str, &str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states.len(), depth);
    for (n, id) in ids.iter().enumerate() {
        let expected = match n {
            _ if n < revoked => "active",
            _ if n == revoked => "revoked",
            _ => "parent revoked",
        };
        assert_eq!(states[id.as_str()], expected, "lease {n} of the chain");
    }
    // Linear, this takes a few hundred milliseconds even in a debug build on a busy machine;
    // walking every chain from its leaf took over a minute.
    assert!(took < Duration::from_secs(10), "list took {took:?}");
}

/// Leases nest up to 10,000 deep (verify follows no longer chain): a lease that deep still
/// grants, and is refused a child, which could never be used.
#[test]
fn a_lease_as_deep_as_leases_nest_grants_and_is_refused_a_child() {
    if crate::harness::files_only("rewrites a record file by hand") {
        return;
    }
    let sandbox = Sandbox::new();
    let ids = write_chain(&sandbox, 9_999, usize::MAX);
    // A real lease, hung under the hand-written chain: the 10,000th.
    let issued = sandbox.issue_json("a", &[]);
    let token = issued["token"].as_str().unwrap();
    let path = sandbox.record_path(&issued["id"]);
    let text = fs::read_to_string(&path).unwrap();
    let last = ids.last().unwrap();
    fs::write(&path, format!("{text}parent = \"{last}\"\n")).unwrap();
    sandbox.verify(token, "a").success();
    let out = sandbox
        .lease(["issue", "--scope", "a"])
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(2)
        .one_error_line();
    assert_eq!(
        out.stderr,
        "lease: the parent lease in the environment is nested 10000 deep, as deep as leases nest: a child of it could never be used\n"
    );
}

/// A parent whose every use is spent (its own `--uses`, or an ancestor's) grants nothing any
/// more: it is refused a child, as an expired or revoked one is, and the run never starts.
#[test]
fn a_used_up_lease_is_refused_a_child() {
    let sandbox = Sandbox::new();
    let issued = sandbox.issue_json("read:x", &["--uses", "1"]);
    let (id, token) = (
        issued["id"].as_str().unwrap(),
        issued["token"].as_str().unwrap(),
    );
    sandbox.verify(token, "read:x").success();
    let expected = format!(
        "lease: the parent lease in the environment is used up: lease {id} has no uses left; a child of it could never be used\n"
    );
    let out = sandbox
        .lease(["issue", "--scope", "read:x"])
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(2);
    assert_eq!(out.stderr, expected);
    let ran = sandbox.path("ran");
    let out = sandbox
        .lease(["run", "--scope", "read:x", "--", "touch"])
        .arg(&ran)
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(125);
    assert_eq!(out.stderr, expected);
    assert!(!ran.exists(), "the command ran under a used-up parent");
    assert_eq!(sandbox.states().len(), 1, "a child was minted");
}

/// `list` of a large store, through a broker too, where the answer is several megabytes.
#[test]
fn list_of_twenty_thousand_leases_prints_them_all() {
    let sandbox = Sandbox::new();
    let ids = write_roots(&sandbox, 20_000);
    let listed = sandbox.lease(["list", "--json"]).run().success().json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), ids.len());
    assert!(listed.iter().all(|e| e["state"] == "active"));
    let table = sandbox.lease(["list"]).run().success().stdout;
    assert_eq!(table.lines().count(), ids.len() + 1);
}

/// Writes `count` live detached root leases as records; returns their ids.
fn write_roots(sandbox: &Sandbox, count: usize) -> Vec<String> {
    let now = SystemTime::now();
    let at = |t: SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let (issued, expires) = (at(now), at(now + Duration::from_secs(3600)));
    let ids: Vec<String> = (1..=count).map(|n| format!("{n:012x}")).collect();
    let records: Vec<(String, String)> = ids
        .iter()
        .map(|id| {
            let text = format!(
                "id = \"{id}\"\ntoken_sha256 = \"{id}{}\"\nscope = [\"read:articles\", \"write:drafts\"]\nissued_at = \"{issued}\"\nexpires_at = \"{expires}\"\nstate = \"active\"\n",
                "0".repeat(52)
            );
            (id.clone(), text)
        })
        .collect();
    sandbox.put_records(&records);
    ids
}

#[test]
fn gc_keeps_a_revoked_lease_until_its_expiry_as_its_help_says() {
    let sandbox = Sandbox::new();
    let help = sandbox.lease(["gc", "--help"]).run().success().stdout;
    let summary: Vec<&str> = help.split("\n\n").take(2).collect();
    assert_eq!(
        summary
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        "Remove records that can never grant again: expired leases, leases whose run is gone \
         without having revoked them (owner gone), and revoked leases once past their expiry \
         A revoked lease is kept until its expiry, so that `verify` says `revoked` rather than \
         `unknown`; gc removes it once it has expired."
    );
    let revoked = sandbox.issue_json("a", &["--ttl", "1"]);
    let id = revoked["id"].as_str().unwrap();
    sandbox.lease(["revoke", id]).run().success();
    let out = sandbox.lease(["gc"]).run().success();
    assert_eq!(out.stdout, "removed 0 leases\n");
    sandbox
        .verify(revoked["token"].as_str().unwrap(), "a")
        .code_is(1)
        .stderr_has("denied: revoked");
    wait_until_past(&revoked["expires_at"]);
    let out = sandbox.lease(["gc"]).run().success();
    assert_eq!(out.stdout, "removed 1 lease\n");
}

#[test]
fn revoke_by_id_twice_unknown_and_all() {
    let sandbox = Sandbox::new();
    let first = sandbox.issue_json("a", &[]);
    let second = sandbox.issue("b");
    let id = first["id"].as_str().unwrap();
    sandbox.lease(["revoke", id]).run().success();
    sandbox.lease(["revoke", id]).run().success();
    sandbox
        .lease(["revoke", "0123456789ab"])
        .run()
        .code_is(1)
        .one_error_line()
        .stderr_has("unknown lease id");
    sandbox
        .lease(["revoke", "../../etc/passwd"])
        .run()
        .code_is(1);
    sandbox
        .lease(["revoke", id, "ffffffffffff"])
        .run()
        .code_is(1);
    sandbox.lease(["revoke"]).run().code_is(2).one_error_line();
    sandbox
        .lease(["revoke", id, "--all"])
        .run()
        .code_is(2)
        .one_error_line();

    sandbox.verify(&second, "b").success();
    sandbox.lease(["revoke", "--all"]).run().success();
    sandbox
        .verify(&second, "b")
        .code_is(1)
        .stderr_has("revoked");
    assert_eq!(
        sandbox.lease(["list", "--json"]).run().success().json(),
        serde_json::json!([])
    );
}

#[test]
fn gc_removes_expired_revoked_past_expiry_and_owner_gone_records() {
    let sandbox = Sandbox::new();
    let active = sandbox.issue_json("keep", &[]);
    let tombstone = sandbox.issue_json("tomb", &[]);
    sandbox
        .lease(["revoke", tombstone["id"].as_str().unwrap()])
        .run()
        .success();
    let short = sandbox.issue_json("short", &["--ttl", "1"]);
    let revoked_short = sandbox.issue_json("rs", &["--ttl", "1"]);
    sandbox
        .lease(["revoke", revoked_short["id"].as_str().unwrap()])
        .run()
        .success();

    let mut orphaned = sandbox
        .run_sh("orphan", "echo $$ $LEASE_ID; exec sleep 60")
        .start();
    let line = orphaned.lines.expect(" ");
    let (child, orphan) = line.trim().split_once(' ').unwrap();
    let child: i32 = child.parse().unwrap();
    orphaned.signal(Signal::SIGKILL);
    orphaned.wait();
    kill_pid(child);
    // Through a broker, the run's lease ends when the broker reads its connection's end: wait
    // for that (the local store tells at once, from the process table).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sandbox.listed(&serde_json::json!(orphan))["state"] != "owner gone" {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphan is not owner gone"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    wait_until_past(&short["expires_at"]);
    let out = sandbox.lease(["gc"]).run().success();
    assert_eq!(out.stdout.trim(), "removed 3 leases", "{out:#?}");
    let left: Vec<String> = sandbox.records().into_keys().collect();
    let mut expected = vec![
        active["id"].as_str().unwrap().to_owned(),
        tombstone["id"].as_str().unwrap().to_owned(),
    ];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(
        sandbox.lease(["gc"]).run().success().stdout.trim(),
        "removed 0 leases"
    );
}

/// The state field of each record, by id.
fn record_states(sandbox: &Sandbox) -> Vec<(String, String)> {
    sandbox
        .records()
        .into_iter()
        .map(|(id, record)| (id, record["state"].as_str().unwrap().to_owned()))
        .collect()
}

/// The leases that `revoked` events with this reason name, in order.
fn revoked_by(sandbox: &Sandbox, reason: &str) -> Vec<String> {
    let log = std::fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).unwrap();
    log.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|e| e["event"] == "revoked" && e["reason"] == reason)
        .map(|e| e["lease"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn revoke_self_revokes_the_presented_lease_and_its_descendants_only() {
    let sandbox = Sandbox::new();
    // Two CI jobs sharing one store, each with a job lease and leases nested in it.
    let issue_under = |parent: &str, scope: &str| {
        sandbox
            .lease(["issue", "--scope", scope, "--json"])
            .env("LEASE_TOKEN", parent)
            .run()
            .success()
            .json()
    };
    let job = sandbox.issue_json("deploy:*", &[]);
    let job_token = job["token"].as_str().unwrap();
    let step = issue_under(job_token, "deploy:staging");
    let nested = issue_under(step["token"].as_str().unwrap(), "deploy:staging");
    let other_job = sandbox.issue_json("deploy:*", &[]);
    let other_step = issue_under(other_job["token"].as_str().unwrap(), "deploy:prod");
    let id = |lease: &serde_json::Value| lease["id"].as_str().unwrap().to_owned();
    let mine = [id(&job), id(&step), id(&nested)];

    let out = sandbox
        .lease(["revoke", "--self"])
        .env("LEASE_TOKEN", job_token)
        .run()
        .success();
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    let mut expected: Vec<(String, String)> = mine
        .iter()
        .map(|id| (id.clone(), "revoked".to_owned()))
        .chain([id(&other_job), id(&other_step)].map(|id| (id, "active".to_owned())))
        .collect();
    expected.sort();
    assert_eq!(record_states(&sandbox), expected);
    let mut logged = revoked_by(&sandbox, "revoke --self");
    logged.sort();
    let mut mine_sorted = mine.to_vec();
    mine_sorted.sort();
    assert_eq!(logged, mine_sorted, "one revoked event per lease");

    // The always-run last step may run twice, or after the lease ended: still success, and
    // nothing is recorded again.
    sandbox
        .lease(["revoke", "--self"])
        .env("LEASE_TOKEN", job_token)
        .run()
        .success();
    assert_eq!(revoked_by(&sandbox, "revoke --self").len(), 3);

    // The token can come from another variable, or from standard input.
    sandbox
        .lease(["revoke", "--self", "--token-env", "DEPLOY_TOKEN"])
        .env("DEPLOY_TOKEN", other_step["token"].as_str().unwrap())
        .run()
        .success();
    assert_eq!(sandbox.listed(&other_step["id"])["state"], "revoked");
    assert_eq!(sandbox.listed(&other_job["id"])["state"], "active");
    sandbox
        .lease(["revoke", "--self", "--token-stdin"])
        .stdin(format!("{}\n", other_job["token"].as_str().unwrap()))
        .run()
        .success();
    sandbox.assert_all_revoked(5);
}

#[test]
fn revoke_self_of_an_expired_lease_succeeds() {
    let sandbox = Sandbox::new();
    let lease = sandbox.issue_json("a", &["--ttl", "1"]);
    wait_until_past(&lease["expires_at"]);
    sandbox
        .lease(["revoke", "--self"])
        .env("LEASE_TOKEN", lease["token"].as_str().unwrap())
        .run()
        .success();
    assert_ne!(sandbox.listed(&lease["id"])["state"], "active");
}

#[test]
fn revoke_self_without_a_usable_token_exits_2_in_one_line() {
    let sandbox = Sandbox::new();
    let kept = sandbox.issue_json("a", &[]);
    let state = sandbox.state_dir();
    let stranger = {
        let elsewhere = Sandbox::new();
        elsewhere.issue("a")
    };
    let truncated = &stranger[..stranger.len() - 1];
    let no_token = "lease: cannot revoke: no token: $LEASE_TOKEN is not set; run this inside `lease run`, or pass --token-env NAME or --token-stdin\n".to_owned();
    let not_a_token = "lease: cannot revoke: the token presented is not a lease token (mistyped or truncated?): present the one `lease issue` printed or `lease run` set\n".to_owned();
    // The state dir is the caller's to choose only without a broker.
    let hint = if crate::harness::broker_mode() {
        ""
    } else {
        ": pass the state dir it was issued in (--state-dir or LEASE_STATE_DIR)"
    };
    // The store as an operator is told of it: the state dir, or the etcd store's address.
    let store = sandbox
        .store_url()
        .map_or_else(|| state.display().to_string(), str::to_owned);
    let unknown = format!("lease: cannot revoke: no lease in {store} matches the token{hint}\n");
    for (token, expected) in [
        (None, no_token),
        (Some(truncated), not_a_token),
        (Some(stranger.as_str()), unknown),
    ] {
        let mut cmd = sandbox.lease(["revoke", "--self"]);
        if let Some(token) = token {
            cmd = cmd.env("LEASE_TOKEN", token);
        }
        let out = cmd.run().code_is(2);
        assert_eq!(out.stderr, expected);
        assert_eq!(out.stdout, "");
    }
    for conflicting in [
        &["revoke", "--self", "--all"][..],
        &["revoke", "--self", kept["id"].as_str().unwrap()],
        &["revoke", "--all", "--token-env", "DEPLOY_TOKEN"],
        &[
            "revoke",
            "--self",
            "--token-stdin",
            "--token-env",
            "DEPLOY_TOKEN",
        ],
    ] {
        sandbox.lease(conflicting).run().code_is(2).one_error_line();
    }
    assert_eq!(sandbox.listed(&kept["id"])["state"], "active");
}

#[test]
fn revoke_help_shows_self_for_a_ci_jobs_last_step() {
    let sandbox = Sandbox::new();
    let help = sandbox.lease(["revoke", "--help"]).run().success().stdout;
    assert!(
        help.ends_with(
            "Examples:
  lease revoke 3f9a2b1c4d5e
  lease revoke --self         # e.g. in a CI job's always-run last step
  lease revoke --self --token-env DEPLOY_TOKEN
  lease revoke --all
"
        ),
        "{help}"
    );
    assert!(
        help.contains("Usage: lease revoke [OPTIONS] <ID|--all|--self>"),
        "{help}"
    );
}

#[test]
fn gc_removes_the_temporary_file_of_a_writer_that_died_mid_write() {
    let sandbox = Sandbox::new();
    sandbox.issue("keep");
    // A record being written goes through `.tmp-PID-RANDOM`; pid 4000000000 runs nowhere.
    let left = sandbox
        .leases_dir()
        .join(".tmp-4000000000-0000000000000001");
    std::fs::write(&left, "").expect("temp file");
    sandbox.lease(["gc"]).run().success();
    assert!(!left.exists(), "gc left {}", left.display());
    assert_eq!(sandbox.records().len(), 1);
}

/// A command name longer than a table can hold is cut there (`--json` has it whole), and one
/// longer than any column width formatting takes does not break `list`.
#[test]
fn a_long_command_name_is_cut_in_the_table_and_whole_in_json() {
    let sandbox = Sandbox::new();
    // Not found on PATH: the run ends at once, and its record keeps the name.
    let name = "c".repeat(200);
    sandbox
        .lease(["run", "--scope", "a", "--", &name])
        .run()
        .code_is(127);
    let table = sandbox.lease(["list", "--all"]).run().success().stdout;
    let cut = format!("{}…", &name[..64]);
    assert!(table.contains(&cut) && !table.contains(&name), "{table}");
    let all = sandbox
        .lease(["list", "--all", "--json"])
        .run()
        .success()
        .json();
    assert_eq!(all[0]["command"], name.as_str(), "{all}");
    if crate::harness::local_only("a broker takes no run line of 70 KB") {
        return;
    }
    let huge = format!("/nonexistent/{}", "c".repeat(70_000));
    sandbox
        .lease(["run", "--scope", "a", "--", &huge])
        .run()
        .code_is(126);
    let table = sandbox.lease(["list", "--all"]).run().success().stdout;
    assert_eq!(
        table.lines().count(),
        3,
        "{}",
        &table[..table.len().min(500)]
    );
}

/// An empty id (`lease revoke "$(cat id-file)"` of a file left empty) is a usage error naming
/// the likely cause, not an unknown id (exit 1) that a script would take for "already gone".
#[test]
fn an_empty_lease_id_is_a_usage_error() {
    let sandbox = Sandbox::new();
    for args in [
        &["revoke", ""][..],
        &["revoke", " "],
        &["log", "--id", ""],
        &["suggest", ""],
    ] {
        let out = sandbox.lease(args).run().code_is(2).one_error_line();
        assert!(
            out.stderr.contains(
                "an empty lease id: pass the 12-digit id shown by `lease list --all` (is the variable or file it came from empty?)"
            ),
            "{args:?}: {out:?}"
        );
    }
}
