//! `lease verify`: decisions, reasons, token sources and JSON.

use crate::harness::{Sandbox, wait_until_past};

fn verify(sandbox: &Sandbox, token: &str, action: &str) -> crate::harness::Out {
    sandbox
        .lease(["verify", action])
        .env("LEASE_TOKEN", token)
        .run()
}

#[test]
fn granted_inside_a_run_and_out_of_scope_names_the_reason() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease([
            "run",
            "--scope",
            "read:articles,write:draft",
            "--",
            "sh",
            "-c",
        ])
        .arg(
            "lease verify read:articles && lease verify write:draft && echo both-granted; \
             lease verify write:prod; echo denied=$?; echo id=$LEASE_ID",
        )
        .run()
        .success();
    assert!(out.stdout.contains("both-granted"), "{out:#?}");
    assert!(out.stdout.contains("denied=1"), "{out:#?}");
    let id = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("id="))
        .unwrap();
    let denial: Vec<&str> = out.stderr.lines().collect();
    // The lease that does not grant the action is named as the token's own.
    assert_eq!(
        denial,
        [format!(
            "lease: denied: out of scope: lease {id} grants read:articles,write:draft, not write:prod"
        )],
        "{out:#?}"
    );
}

#[test]
fn wildcard_scopes_grant_by_prefix_only() {
    let sandbox = Sandbox::new();
    let token = sandbox.issue("read:*,deploy:staging");
    verify(&sandbox, &token, "read:articles").success();
    verify(&sandbox, &token, "read:").success();
    verify(&sandbox, &token, "deploy:staging").success();
    verify(&sandbox, &token, "deploy:staging2")
        .code_is(1)
        .stderr_has("out of scope");
    verify(&sandbox, &token, "write:articles")
        .code_is(1)
        .stderr_has("out of scope");
    verify(&sandbox, &token, "rea")
        .code_is(1)
        .stderr_has("out of scope");
}

#[test]
fn unknown_token_is_denied() {
    if crate::harness::local_only(
        "it checks that no local store is created, and the sandbox's broker creates its own",
    ) {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.issue("a");
    // A well-formed token that this store never issued.
    let elsewhere = Sandbox::new().issue("a");
    verify(&sandbox, &elsewhere, "a")
        .code_is(1)
        .one_error_line()
        .stderr_has("denied: unknown");
    // A store that does not exist yet knows no token either, and verify does not create it.
    let empty = Sandbox::new();
    verify(&empty, &elsewhere, "a")
        .code_is(1)
        .stderr_has("unknown");
    assert!(!empty.state_dir().exists());
}

#[test]
fn no_denial_shows_the_presented_token() {
    if crate::harness::files_only("corrupts a record file by hand") {
        return;
    }
    let sandbox = Sandbox::new();
    let elsewhere = Sandbox::new().issue("a");
    let token = sandbox.issue_json("a", &["--uses", "1"]);
    let (token, id) = (
        token["token"].as_str().unwrap(),
        token["id"].as_str().unwrap(),
    );
    let mut typo = token.to_owned().into_bytes();
    typo[12] = if typo[12] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();
    let denials = [
        (elsewhere.as_str(), "a", "unknown"),
        (typo.as_str(), "a", "malformed"),
        (token, "b", "out of scope"),
    ];
    for (presented, action, reason) in denials {
        verify(&sandbox, presented, action)
            .code_is(1)
            .stderr_has(&format!("denied: {reason}"))
            .lacks_token(presented);
        let json = sandbox
            .lease(["verify", "--json", action])
            .env("LEASE_TOKEN", presented)
            .run()
            .code_is(1)
            .lacks_token(presented)
            .json();
        assert_eq!(json["reason"], reason);
    }
    verify(&sandbox, token, "a").success().lacks_token(token);
    verify(&sandbox, token, "a")
        .code_is(1)
        .stderr_has("denied: used up")
        .lacks_token(token);
    sandbox.lease(["revoke", id]).run().success();
    verify(&sandbox, token, "a")
        .code_is(1)
        .stderr_has("denied: revoked")
        .lacks_token(token);
    std::fs::write(sandbox.record_path(&id.into()), "garbage").unwrap();
    verify(&sandbox, token, "a")
        .code_is(1)
        .stderr_has("denied: corrupt record")
        .lacks_token(token);
    // A record that cannot be read is still this token's lease: its id is named.
    let json = sandbox
        .lease(["verify", "--json", "a"])
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(1)
        .json();
    assert_eq!(json["reason"], "corrupt record");
    assert_eq!(json["id"], id, "{json}");
    assert_eq!(json["expires_at"], serde_json::Value::Null, "{json}");
    let trail = std::fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).unwrap();
    for presented in [token, &elsewhere, &typo] {
        assert!(!trail.contains(&presented[4..]), "the trail shows a token");
    }
}

#[test]
fn mistyped_or_truncated_token_is_malformed_without_touching_the_store() {
    if crate::harness::local_only(
        "it checks that no local store is created, and the sandbox's broker creates its own",
    ) {
        return;
    }
    let sandbox = Sandbox::new();
    let token = sandbox.issue("a");
    let truncated = &token[..token.len() - 1];
    let mut typo = token.clone().into_bytes();
    typo[12] = if typo[12] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();
    for bad in [
        truncated,
        &typo,
        "agt_AAAA",
        "not-a-lease-token",
        &format!("{token}x"),
    ] {
        verify(&sandbox, bad, "a")
            .code_is(1)
            .one_error_line()
            .stderr_has("denied: malformed");
    }
    // Not touching the store: even an unusable store does not change the answer.
    std::fs::set_permissions(
        sandbox.state_dir(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    verify(&sandbox, truncated, "a")
        .code_is(1)
        .stderr_has("malformed");
    verify(&sandbox, &token, "a").code_is(2);
}

#[test]
fn revoked_token_is_denied_as_revoked() {
    let sandbox = Sandbox::new();
    let out = sandbox.issue_json("a", &[]);
    let token = out["token"].as_str().unwrap();
    sandbox
        .lease(["revoke", out["id"].as_str().unwrap()])
        .run()
        .success();
    verify(&sandbox, token, "a")
        .code_is(1)
        .one_error_line()
        .stderr_has("revoked");
}

#[test]
fn expired_token_is_denied_and_stays_expired_on_record() {
    let sandbox = Sandbox::new();
    let out = sandbox.issue_json("a", &["--ttl", "1"]);
    let token = out["token"].as_str().unwrap();
    let id = out["id"].as_str().unwrap();
    verify(&sandbox, token, "a").success();
    wait_until_past(&out["expires_at"]);
    verify(&sandbox, token, "a")
        .code_is(1)
        .one_error_line()
        .stderr_has("expired");
    assert_eq!(
        sandbox.records()[id]["state"].as_str(),
        Some("expired"),
        "marked on the spot"
    );
    verify(&sandbox, token, "a")
        .code_is(1)
        .stderr_has("expired");
}

#[test]
fn no_token_cannot_decide() {
    let sandbox = Sandbox::new();
    sandbox
        .lease(["verify", "a"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("LEASE_TOKEN is not set");
    sandbox.verify("", "a").code_is(2);
    sandbox
        .lease(["verify", "a", "--token-stdin"])
        .stdin("")
        .run()
        .code_is(2);
    let out = sandbox
        .lease(["verify", "a", "--json"])
        .run()
        .code_is(2)
        .json();
    assert_eq!(out["granted"], false);
    assert_eq!(out["reason"], "no token");
}

#[test]
fn token_from_stdin_or_a_named_variable() {
    let sandbox = Sandbox::new();
    let token = sandbox.issue("a");
    sandbox
        .lease(["verify", "a", "--token-stdin"])
        .stdin(format!("{token}\n"))
        .run()
        .success();
    sandbox
        .lease(["verify", "b", "--token-stdin"])
        .stdin(token.clone())
        .run()
        .code_is(1)
        .stderr_has("out of scope");
    sandbox
        .lease(["verify", "a", "--token-env", "MY_TOKEN"])
        .env("MY_TOKEN", &token)
        .run()
        .success();
    // --token-stdin wins over the environment.
    sandbox
        .lease(["verify", "a", "--token-stdin"])
        .env("LEASE_TOKEN", &token)
        .stdin("agt_wrong\n")
        .run()
        .code_is(1);
}

/// A gate that writes the token and keeps its end of the pipe open gets its answer at the end
/// of the line, not when the pipe closes.
#[test]
fn token_stdin_is_one_line_answered_with_the_pipe_still_open() {
    use std::io::Write as _;
    let sandbox = Sandbox::new();
    let token = sandbox.issue("a");
    for (action, code) in [("a", 0), ("b", 1)] {
        let mut command = sandbox.lease(["verify", action, "--token-stdin"]).command;
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = command.spawn().expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(format!("{token}\n").as_bytes())
            .expect("write");
        let status = crate::harness::wait_for_exit(&mut child);
        drop(stdin);
        assert_eq!(status.code(), Some(code), "{action}");
    }
}

/// A pipe whose writer neither finishes a line nor closes it is not waited on without end: after
/// 30 s of silence, the documented "no token" error (exit 2), whether nothing came or part of a
/// token. The wait counts from the last byte (a writer may take its time): part of a token
/// written 2 s in gives up 30 s after that, not after the start. Both run at once.
#[test]
fn token_stdin_gives_up_on_a_silent_pipe() {
    use std::io::{Read as _, Write as _};
    use std::time::{Duration, Instant};
    let sandbox = Sandbox::new();
    let token = sandbox.issue("a");
    let start = |sent: &str| {
        let mut command = sandbox.lease(["verify", "a", "--token-stdin"]).command;
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(sent.as_bytes()).expect("write");
        (child, stdin)
    };
    let started = Instant::now();
    let (mut silent, _open) = start("");
    let (mut partial, mut writer) = start(&token[..10]);
    // The writer pauses, then sends a little more, never a line break.
    std::thread::sleep(Duration::from_secs(2));
    // Taken before the write: lease may read the bytes, and start its 30 s again, before this
    // thread would read the clock after it.
    let last_byte = started.elapsed();
    writer.write_all(&token.as_bytes()[10..20]).expect("write");
    let wait = |child: &mut std::process::Child| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break (status, started.elapsed());
            }
            assert!(Instant::now() < deadline, "no answer within 90 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for (child, what, from) in [
        (
            &mut silent,
            "nothing came on standard input",
            Duration::ZERO,
        ),
        (
            &mut partial,
            "part of a line came on standard input, then nothing",
            last_byte,
        ),
    ] {
        let (status, waited) = wait(child);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("stderr");
        assert_eq!(status.code(), Some(2), "{stderr}");
        assert_eq!(
            stderr,
            format!(
                "lease: cannot verify: no token: {what} for 30 s; pipe the token to --token-stdin, followed by a line break or the end of the input\n"
            )
        );
        assert!(
            waited >= from + Duration::from_secs(30),
            "gave up after {waited:?}"
        );
    }
    drop(writer);
}

#[test]
fn json_has_the_documented_shape() {
    let sandbox = Sandbox::new();
    let issued = sandbox.issue_json("a", &[]);
    let token = issued["token"].as_str().unwrap();
    let granted = sandbox
        .lease(["verify", "a", "--json"])
        .env("LEASE_TOKEN", token)
        .run()
        .success()
        .json();
    assert_eq!(
        granted,
        serde_json::json!({
            "granted": true,
            "reason": "granted",
            "id": issued["id"],
            "expires_at": issued["expires_at"],
        })
    );
    let denied = sandbox
        .lease(["verify", "b", "--json"])
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(1)
        .json();
    assert_eq!(denied["granted"], false);
    assert_eq!(denied["reason"], "out of scope");
    assert_eq!(denied["id"], issued["id"]);
    let unknown = sandbox
        .lease(["verify", "a", "--json"])
        .env("LEASE_TOKEN", Sandbox::new().issue("a"))
        .run()
        .code_is(1)
        .json();
    assert_eq!(
        unknown,
        serde_json::json!({"granted": false, "reason": "unknown", "id": null, "expires_at": null})
    );
    let malformed = sandbox
        .lease(["verify", "a", "--json"])
        .env("LEASE_TOKEN", "agt_nope")
        .run()
        .code_is(1)
        .json();
    assert_eq!(malformed["reason"], "malformed");
}

#[test]
fn bad_usage_is_2() {
    let sandbox = Sandbox::new();
    for args in [
        &["verify"][..],
        &["verify", "a b"],
        &["verify", "a", "--token-stdin", "--token-env", "X"],
        &["verify", "a", "--token", "agt_x"],
        &["verify", "a", "extra"],
    ] {
        let out = sandbox.lease(args).env("LEASE_TOKEN", "agt_x").run();
        assert_eq!(out.code(), Some(2), "{args:?}: {out:#?}");
        out.one_error_line();
    }
}
