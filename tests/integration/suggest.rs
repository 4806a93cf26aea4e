//! `lease suggest ID`: the narrowest scope for next time, from what a lease was granted and
//! denied, and what it says of a lease that has not ended.

use crate::harness::Sandbox;

#[test]
fn suggest_names_the_two_scopes_used_of_four() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["run", "--scope", "read:articles,write:draft,deploy:staging,admin:*", "--", "sh", "-c"])
        .arg("lease verify read:articles; lease verify write:draft; lease verify read:articles; lease verify delete:all 2>/dev/null; echo $LEASE_ID")
        .run()
        .success();
    let id = out.stdout.trim();
    let human = sandbox.lease(["suggest", id]).run().success().stdout;
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines[0], "--scope read:articles,write:draft");
    assert_eq!(lines[1], "unused: deploy:staging,admin:*");
    assert_eq!(lines[2], "denied: delete:all (out of scope)");
    let json = sandbox
        .lease(["suggest", id, "--json"])
        .run()
        .success()
        .json();
    assert_eq!(
        json["suggested"],
        serde_json::json!(["read:articles", "write:draft"])
    );
    assert_eq!(
        json["unused"],
        serde_json::json!(["deploy:staging", "admin:*"])
    );
    sandbox
        .lease(["suggest", "0123456789ab"])
        .run()
        .code_is(1)
        .one_error_line();
}

/// What the leases nested in a run were granted (a nested run, a lease issued inside it),
/// the run needed too: the suggestion covers it.
#[test]
fn suggest_counts_what_the_leases_nested_in_it_were_granted() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["run", "--scope", "a:*,b:*", "--", "sh", "-c"])
        .arg("lease run --scope a:b -- lease verify a:b && t=$(lease issue --scope a:c) && LEASE_TOKEN=$t lease verify a:c && echo $LEASE_ID")
        .run()
        .success();
    let id = out.stdout.trim();
    let human = sandbox.lease(["suggest", id]).run().success().stdout;
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines[0], "--scope a:b,a:c", "{human}");
    assert_eq!(lines[1], "unused: b:*", "{human}");
}

#[test]
fn suggest_on_a_lease_that_has_not_ended_says_so() {
    let sandbox = Sandbox::new();
    let issued = sandbox.issue_json("read:a,write:b", &[]);
    let id = issued["id"].as_str().unwrap();
    let suggest = |args: &[&str]| {
        let mut all = vec!["suggest", id];
        all.extend(args);
        sandbox.lease(all).run().success()
    };
    assert_eq!(
        suggest(&[]).stdout,
        format!(
            "lease {id} has not ended yet: it has been granted nothing so far\nunused: read:a,write:b\n"
        )
    );
    sandbox
        .verify(issued["token"].as_str().unwrap(), "read:a")
        .success();
    assert_eq!(
        suggest(&[]).stdout,
        format!(
            "lease {id} has not ended yet: this is what it has used so far\n--scope read:a\nunused: write:b\n"
        )
    );
    assert_eq!(suggest(&["--json"]).json()["ended"], false);
    sandbox.lease(["revoke", id]).run().success();
    assert_eq!(suggest(&[]).stdout, "--scope read:a\nunused: write:b\n");
    assert_eq!(suggest(&["--json"]).json()["ended"], true);
}
