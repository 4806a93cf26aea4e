//! `lease status`: the lease whose token a command holds, inside a run and after it, used up,
//! and with the token on standard input.

use crate::harness::Sandbox;

#[test]
fn status_inside_a_run_and_after_it() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "read:x,write:y=2",
            "--uses",
            "5",
            "--",
            "sh",
            "-c",
        ])
        .arg("lease status; lease status --json; echo $LEASE_TOKEN")
        .run()
        .success();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines[0].starts_with("lease:") && lines[0].ends_with("(active)"),
        "{out:#?}"
    );
    assert_eq!(lines[1], "scope:     read:x,write:y=2");
    assert!(
        lines[2].starts_with("expires:")
            && (lines[2].contains("(in 9m") || lines[2].contains("(in 10m")),
        "{out:#?}"
    );
    assert_eq!(lines[3], "uses left: 5");
    let json: serde_json::Value = serde_json::from_str(lines[5]).unwrap();
    assert_eq!(json["valid"], true);
    assert_eq!(json["scope_uses_left"], serde_json::json!({"write:y": 2}));
    let token = lines[6];
    let after = sandbox
        .lease(["status", "--json"])
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(1);
    assert_eq!(after.json()["state"], "revoked");
    assert!(
        after.stderr.contains("no longer valid: revoked"),
        "{after:#?}"
    );
    sandbox.lease(["status"]).run().code_is(2).one_error_line();
    // No lease matches: still an object to read, every field empty, `state` saying why.
    let stranger = Sandbox::new().issue("a");
    for (token, state) in [(stranger.as_str(), "unknown"), ("agt_x", "malformed")] {
        let none = sandbox
            .lease(["status", "--json"])
            .env("LEASE_TOKEN", token)
            .run()
            .code_is(1)
            .one_error_line();
        assert_eq!(
            none.json(),
            serde_json::json!({
                "id": null, "valid": false, "state": state, "scope": [], "expires_at": null,
                "seconds_left": 0, "uses_left": null, "scope_uses_left": {}, "parent": null,
                "run": null
            })
        );
    }
}

#[test]
fn status_of_a_used_up_lease_is_invalid_and_exits_1() {
    let sandbox = Sandbox::new();
    for (scope, uses) in [("a", "--uses=1"), ("a=1", "--uses=9")] {
        let out = sandbox
            .lease(["run", "--scope", scope, uses, "--", "sh", "-c"])
            .arg("lease verify a; lease status; echo status=$?; echo $LEASE_ID")
            .run()
            .success();
        let lines: Vec<&str> = out.stdout.lines().collect();
        let id = lines.last().unwrap();
        assert_eq!(lines[0], format!("lease:     {id} (used up)"), "{out:#?}");
        assert_eq!(lines[lines.len() - 2], "status=1", "{out:#?}");
        assert_eq!(
            out.stderr,
            format!("lease: lease {id} is no longer valid: used up: lease {id} has no uses left\n")
        );
    }
    let token = sandbox.issue_json("a", &["--uses", "1"]);
    sandbox
        .verify(token["token"].as_str().unwrap(), "a")
        .success();
    let out = sandbox
        .lease(["status", "--json"])
        .env("LEASE_TOKEN", token["token"].as_str().unwrap())
        .run()
        .code_is(1);
    let json = out.json();
    assert_eq!(
        (&json["valid"], &json["state"], &json["seconds_left"]),
        (
            &serde_json::json!(false),
            &serde_json::json!("used up"),
            &serde_json::json!(0)
        )
    );
}

#[test]
fn status_and_renew_take_the_token_from_standard_input() {
    let sandbox = Sandbox::new();
    let issued = sandbox.issue_json("a", &["--ttl", "60"]);
    let (id, token) = (
        issued["id"].as_str().unwrap(),
        issued["token"].as_str().unwrap(),
    );
    let out = sandbox
        .lease(["status", "--token-stdin"])
        .stdin(format!("{token}\n"))
        .run()
        .success();
    assert_eq!(
        out.stdout.lines().next(),
        Some(format!("lease:     {id} (active)").as_str())
    );
    let out = sandbox
        .lease(["renew", "--token-stdin", "--ttl", "60"])
        .stdin(token)
        .run()
        .success();
    assert!(
        humantime::parse_rfc3339(out.stdout.trim()).is_ok() && out.stderr.is_empty(),
        "{out:#?}"
    );
    // The fix the error suggests is one these subcommands accept.
    for sub in ["status", "renew"] {
        let out = sandbox.lease([sub]).run().code_is(2).one_error_line();
        assert!(
            out.stderr
                .ends_with("pass --token-env NAME or --token-stdin\n"),
            "{out:#?}"
        );
        let out = sandbox
            .lease([sub, "--token-stdin"])
            .stdin("")
            .run()
            .code_is(2)
            .one_error_line();
        assert!(
            out.stderr
                .ends_with(": no token: standard input is empty\n"),
            "{out:#?}"
        );
    }
}

/// Without a token to read, `status --json` still prints its object (state `no token`, every
/// field empty) before its error line, as `verify --json` does: a script reading the JSON has
/// one to read (examples/gitlab-ci.yml saves the id from it).
#[test]
fn status_json_without_a_token_prints_its_object() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["status", "--json"])
        .env_remove("LEASE_TOKEN")
        .run()
        .code_is(2)
        .one_error_line();
    let json: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(json["state"], "no token", "{out:?}");
    assert_eq!(json["valid"], false);
    assert!(json["id"].is_null());
    let out = sandbox
        .lease(["status"])
        .env_remove("LEASE_TOKEN")
        .run()
        .code_is(2)
        .one_error_line();
    assert_eq!(out.stdout, "");
}
