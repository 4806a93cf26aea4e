//! The config file: defaults, limits, the token variable, and errors that name the key.

use std::time::{Duration, SystemTime};

use crate::harness::Sandbox;

#[test]
fn default_ttl_and_token_env_apply_to_run_and_verify() {
    let sandbox = Sandbox::new();
    sandbox.write_config("default_ttl = \"2m\"\ntoken_env = \"AGENT_TOKEN\"\n");
    let before = SystemTime::now();
    let out = sandbox
        .lease(["run", "--scope", "a", "--", "sh", "-c"])
        .arg("echo $LEASE_EXPIRES_AT ${LEASE_TOKEN-none} ${AGENT_TOKEN%%_*}; lease verify a && echo granted")
        .run()
        .success();
    let fields: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(fields[1..], ["none", "agt", "granted"], "{out:#?}");
    let expires = humantime::parse_rfc3339(fields[0]).unwrap();
    crate::harness::assert_expires_in(
        expires,
        Duration::from_secs(120),
        (before, SystemTime::now()),
    );
}

#[test]
fn max_ttl_refuses_longer_leases_naming_the_file() {
    let sandbox = Sandbox::new();
    let path = sandbox.write_config("max_ttl = 60\n");
    sandbox
        .lease(["run", "--scope", "a", "--ttl", "61", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has(path.to_str().unwrap());
    sandbox
        .lease(["issue", "--scope", "a", "--ttl", "2m"])
        .run()
        .code_is(2)
        .one_error_line();
    sandbox
        .lease(["run", "--scope", "a", "--ttl", "60", "--", "true"])
        .run()
        .success();
    // The built-in default (600 s) is capped by a smaller max_ttl rather than refused.
    sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .run()
        .success();
    assert!(sandbox.records().len() == 2);
}

#[test]
fn unknown_keys_and_bad_values_are_errors_naming_key_and_file() {
    let sandbox = Sandbox::new();
    let path = sandbox.write_config("default_ttl = \"5m\"\ncolour = \"blue\"\n");
    let out = sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line();
    assert!(
        out.stderr.contains("colour") && out.stderr.contains(path.to_str().unwrap()),
        "{out:#?}"
    );
    assert!(out.stderr.contains("line 2"), "{out:#?}");
    sandbox
        .lease(["list"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("colour");

    sandbox.write_config("max_ttl = \"forever\"\n");
    sandbox
        .lease(["list"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("max_ttl");
    sandbox.write_config("token_env = \"not valid\"\n");
    sandbox
        .lease(["list"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("token_env");
    sandbox.write_config("scrub_env = [\"AWS_*\", \"\"]\n");
    sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("scrub_env: an empty pattern matches no variable");
    sandbox.write_config("scrub_env = [\"agt_AAAAAAAAAAAA\"]\n");
    sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("scrub_env: that is a token, not a variable name pattern");
    // A key given twice: the second line is the one to fix.
    sandbox.write_config("default_ttl = \"5m\"\ndefault_ttl = \"6m\"\n");
    sandbox
        .lease(["list"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("line 2: default_ttl: duplicate key");
    sandbox.write_config("[profile.p]\nscope = []\n");
    sandbox
        .lease(["run", "--profile", "p", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("profile.p.scope: an empty list grants nothing");
    assert!(sandbox.records().is_empty());
}

#[test]
fn config_flag_and_env_pick_the_file_and_a_missing_one_is_an_error() {
    if crate::harness::local_only("the broker reads its own config, not the client's") {
        return;
    }
    let sandbox = Sandbox::new();
    let custom = sandbox.path("custom.toml");
    std::fs::write(&custom, "max_ttl = 10\n").unwrap();
    let custom = custom.to_str().unwrap();
    sandbox
        .lease([
            "--config", custom, "run", "--scope", "a", "--ttl", "11", "--", "true",
        ])
        .run()
        .code_is(125);
    sandbox
        .lease(["run", "--scope", "a", "--ttl", "11", "--", "true"])
        .env("LEASE_CONFIG", custom)
        .run()
        .code_is(125)
        .stderr_has(custom);
    sandbox
        .lease(["list", "--config", "/nonexistent/lease.toml"])
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("/nonexistent/lease.toml");
}

/// No default config is no policy; a default config that is a link to a file that is gone is a
/// policy gone missing, and nothing is minted until it is back or the link is removed.
#[test]
fn a_default_config_linked_to_a_missing_file_fails_closed() {
    if crate::harness::local_only("the broker reads its own config, not the client's") {
        return;
    }
    let sandbox = Sandbox::new();
    let real = sandbox.path("policy.toml");
    std::fs::write(&real, "allowed_scopes = [\"read:*\"]\n").unwrap();
    let link = sandbox.write_config("");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    sandbox
        .lease(["issue", "--scope", "write:x"])
        .run()
        .code_is(2);
    std::fs::rename(&real, sandbox.path("moved.toml")).unwrap();
    let out = sandbox
        .lease(["issue", "--scope", "write:x"])
        .run()
        .code_is(2)
        .one_error_line();
    assert!(
        out.stderr
            .contains("is a symbolic link to something that does not exist"),
        "{out:?}"
    );
    std::fs::remove_file(&link).unwrap();
    assert!(sandbox.states().is_empty(), "{:?}", sandbox.states());
    // The same when it is the directory above that is linked to something gone.
    let dir = link.parent().unwrap();
    std::fs::remove_dir(dir).unwrap();
    std::os::unix::fs::symlink(sandbox.path("not-mounted"), dir).unwrap();
    let out = sandbox
        .lease(["issue", "--scope", "write:x"])
        .run()
        .code_is(2)
        .one_error_line();
    assert!(out.stderr.contains(dir.to_str().unwrap()), "{out:?}");
    std::fs::remove_file(dir).unwrap();
    sandbox
        .lease(["issue", "--scope", "write:x"])
        .run()
        .success();
}

/// The config sets the policy and the broker: one that another user could rewrite (writable
/// by group or others, another user's, in a directory others may write to) is refused, as
/// OpenSSH refuses such files, in one line naming it; nothing is minted and nothing is asked
/// of a broker it names.
#[test]
fn a_config_others_could_change_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    if crate::harness::local_only("the broker reads its own config, not the client's") {
        return;
    }
    let sandbox = Sandbox::new();
    let file = sandbox.path("team/team.toml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    // A broker the test holds: any client that took the config's word would connect to it.
    let broker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    broker.set_nonblocking(true).unwrap();
    let at = broker.local_addr().unwrap();
    std::fs::write(&file, format!("broker = \"http://{at}\"\n")).unwrap();
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let refused = |why: &str| {
        let issue = sandbox
            .lease(["issue", "--scope", "a"])
            .env("LEASE_CONFIG", &file)
            .run()
            .code_is(2)
            .one_error_line();
        assert!(issue.stderr.contains(why), "{issue:#?}");
        let run = sandbox
            .lease(["run", "--scope", "a", "--", "true"])
            .env("LEASE_CONFIG", &file)
            .run()
            .code_is(125)
            .one_error_line();
        assert!(run.stderr.contains(why), "{run:#?}");
        let verify = sandbox
            .lease(["verify", "a"])
            .env("LEASE_CONFIG", &file)
            .env("LEASE_TOKEN", format!("agt_{}", "A".repeat(48)))
            .run()
            .code_is(2)
            .one_error_line();
        assert!(verify.stderr.contains(why), "{verify:#?}");
        assert!(sandbox.records().is_empty());
        assert!(
            broker.accept().is_err(),
            "a client asked the broker a refused config names"
        );
    };
    chmod(&file, 0o666);
    refused("is writable by group or others (mode 666)");
    chmod(&file, 0o644);
    chmod(file.parent().unwrap(), 0o777);
    refused("is writable by group or others (mode 777): anyone could put another config");
    // Sticky, as /tmp is: others may not replace a file they do not own.
    chmod(file.parent().unwrap(), 0o1777);
    std::fs::write(&file, "max_ttl = 10\n").unwrap();
    sandbox
        .lease(["issue", "--scope", "a", "--ttl", "11"])
        .env("LEASE_CONFIG", &file)
        .run()
        .code_is(2)
        .stderr_has("max_ttl");
    if nix::unistd::geteuid().is_root() {
        let nobody = nix::unistd::User::from_name("nobody")
            .unwrap()
            .expect("nobody");
        nix::unistd::chown(&file, Some(nobody.uid), None).unwrap();
        refused("belongs to uid");
    } else {
        crate::harness::skip("not-root", "only root can give a file away");
    }
}

/// A config reached through a symlink: whoever may write beside the link may point it at
/// another config. A link in a directory others may write to is refused as a file there is;
/// the same link in a directory only its owner writes is followed.
#[test]
fn a_config_reached_through_a_link_others_could_swap_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    if crate::harness::local_only("the broker reads its own config, not the client's") {
        return;
    }
    let sandbox = Sandbox::new();
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let safe = sandbox.path("safe");
    std::fs::create_dir_all(&safe).unwrap();
    chmod(&safe, 0o700);
    let strict = safe.join("strict.toml");
    std::fs::write(&strict, "allowed_scopes = [\"read:x\"]\n").unwrap();
    chmod(&strict, 0o600);
    let shared = sandbox.path("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let link = shared.join("policy.toml");
    std::os::unix::fs::symlink(&strict, &link).unwrap();
    let run = || {
        sandbox
            .lease(["run", "--scope", "read:x", "--", "true"])
            .env("LEASE_CONFIG", &link)
            .run()
    };
    chmod(&shared, 0o777);
    run().code_is(125).one_error_line().stderr_has(&format!(
        "its directory {} is writable by group or others (mode 777)",
        shared.display()
    ));
    // A link in the middle of a chain, the path given and the file both in safe places.
    let entry = safe.join("entry.toml");
    std::os::unix::fs::symlink(&link, &entry).unwrap();
    sandbox
        .lease(["run", "--scope", "read:x", "--", "true"])
        .env("LEASE_CONFIG", &entry)
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has(&format!(
            "its directory {} is writable by group or others (mode 777)",
            shared.display()
        ));
    assert!(sandbox.records().is_empty());
    chmod(&shared, 0o755);
    run().success();
}

#[test]
fn the_readme_policy_example_is_a_valid_config() {
    let example = crate::harness::readme_policy_example();
    let sandbox = Sandbox::new();
    sandbox.write_config(&example);
    sandbox.lease(["list"]).run().success();
    let out = sandbox
        .lease([
            "run",
            "--profile",
            "deploy",
            "--",
            "sh",
            "-c",
            "echo $LEASE_SCOPE ${DEPLOY_TOKEN%%_*}",
        ])
        .run()
        .success();
    assert_eq!(out.stdout.trim(), "deploy:staging agt");
}
