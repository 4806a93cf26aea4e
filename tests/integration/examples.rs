//! The shipped examples, run for real: make, sh, python3, and the CI job definitions' steps.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use crate::harness::Sandbox;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

#[test]
fn makefile_runs_leased_targets_under_make_j8() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .command("make")
        .arg("-j8")
        .arg("-f")
        .arg(example("Makefile"))
        .run()
        .success();
    for line in ["fetch: lease", "build: wrote a draft", "publish: lease"] {
        assert!(out.stdout.contains(line), "{line}: {out:#?}");
    }
    sandbox.assert_all_revoked(3);
}

#[test]
fn agent_wrapper_narrows_the_scope_scrubs_secrets_and_writes_a_receipt() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .command(example("agent.sh"))
        .arg("sh")
        .arg("-c")
        .arg("echo $LEASE_SCOPE ${GITHUB_TOKEN-scrubbed}; lease verify write:draft; lease verify deploy:prod; exit 7")
        .env("AGENT_SCOPE", "read:x,write:draft")
        .env("GITHUB_TOKEN", "ghp_long_lived")
        .run()
        .code_is(7);
    assert_eq!(out.stdout.trim(), "read:x,write:draft scrubbed");
    let receipt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sandbox.path("agent-receipt.json")).unwrap())
            .unwrap();
    let decisions = crate::harness::receipt_decisions(&receipt);
    assert_eq!(
        decisions,
        [
            ("write:draft".to_owned(), true),
            ("deploy:prod".to_owned(), false)
        ]
    );
    assert_eq!(receipt["exit"]["code"], 7);
}

#[test]
fn gate_runs_granted_actions_and_refuses_others() {
    let sandbox = Sandbox::new();
    let gate = example("gate.py");
    let script = format!(
        "{g} write:draft echo ran-granted; {g} write:prod echo ran-denied; echo denied=$?",
        g = gate.display()
    );
    let out = sandbox.run_sh("write:draft", &script).run().success();
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

/// A CI job's project: stand-ins for the scripts the job definitions call, each checking with
/// `lease verify` that it was handed the right lease.
fn ci_project(sandbox: &Sandbox) -> PathBuf {
    let project = sandbox.path("project");
    std::fs::create_dir_all(&project).unwrap();
    let scripts = [
        (
            "fetch-artifacts.sh",
            "lease verify read:artifacts && ! lease verify deploy:staging 2>/dev/null && echo fetched",
        ),
        (
            "deploy.sh",
            "lease verify deploy:staging && echo \"deployed to $1 with $LEASE_TOKEN\"",
        ),
    ];
    for (name, body) in scripts {
        let path = project.join(name);
        std::fs::write(&path, format!("#!/bin/sh\nset -e\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    project
}

/// Runs GitHub Actions steps in order, each in a shell of its own, as the runner does, passing
/// `$GITHUB_ENV` on between steps; `env` is the job's environment. `lease` is already on PATH
/// (installing it is what `.ci/run` tests), so install steps are skipped. Returns the output.
fn run_steps(sandbox: &Sandbox, project: &Path, env: &str, steps: &[String]) -> String {
    let mut script = format!(
        "set -e\nexport {env} GITHUB_ENV=\"$PWD/.github_env\" GITHUB_PATH=/dev/null\n: > \"$GITHUB_ENV\"\n"
    );
    for step in steps.iter().filter(|s| !s.contains("install.sh")) {
        script.push_str(&format!("( {step}\n)\nset -a; . \"$GITHUB_ENV\"; set +a\n"));
    }
    let out = sandbox.sh(&script).command_dir(project).run();
    assert_eq!(out.code(), Some(0), "{out:#?}");
    out.stdout + &out.stderr
}

fn yaml(name: &str) -> Yaml {
    let text = std::fs::read_to_string(example(name)).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

#[test]
fn github_actions_job_runs_its_steps_with_a_job_lease_and_step_leases() {
    let sandbox = Sandbox::new();
    let project = ci_project(&sandbox);
    let job = &yaml("github-actions.yml")["jobs"]["deploy"];
    let state = job["env"]["LEASE_STATE_DIR"].as_str().unwrap().replace(
        "${{ runner.temp }}",
        sandbox.path("runner").to_str().unwrap(),
    );
    let steps: Vec<String> = job["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|step| step["run"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(steps.len(), 5);
    let output = run_steps(
        &sandbox,
        &project,
        &format!("LEASE_STATE_DIR={state}"),
        &steps,
    );
    assert!(output.contains("fetched"), "{output}");
    assert!(
        output.contains("deployed to staging with ***"),
        "the deploy step masks its token: {output}"
    );
    let listed = sandbox
        .lease(["--state-dir", &state, "list", "--all", "--json"])
        .run()
        .success()
        .json();
    let leases = listed.as_array().unwrap();
    assert_eq!(
        leases.len(),
        3,
        "the job's lease and one per acting step: {listed}"
    );
    assert!(leases.iter().all(|l| l["state"] == "revoked"), "{listed}");
    assert_eq!(
        leases.iter().filter(|l| l["parent"].is_string()).count(),
        2,
        "step leases nest in the job's"
    );
}

#[test]
fn gitlab_ci_job_runs_its_scripts_with_a_job_lease_and_command_leases() {
    let sandbox = Sandbox::new();
    let project = ci_project(&sandbox);
    let job = &yaml("gitlab-ci.yml")["deploy"];
    let lines = |key: &str| -> Vec<String> {
        job[key]
            .as_vec()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect()
    };
    let state = project.join(".lease");
    // before_script and script share one shell; after_script runs in a shell of its own.
    let main: Vec<String> = std::iter::once(format!("export LEASE_STATE_DIR={}", state.display()))
        .chain(lines("before_script"))
        .chain(lines("script"))
        .filter(|l| !l.contains("install.sh"))
        .collect();
    let out = sandbox
        .sh(&format!("set -e\n{}", main.join("\n")))
        .command_dir(&project)
        .run();
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(
        out.stdout.contains("fetched") && out.stdout.contains("deployed to staging with ***"),
        "{out:#?}"
    );
    let after = lines("after_script").join("\n");
    sandbox
        .sh(&after)
        .env("LEASE_STATE_DIR", &state)
        .command_dir(&project)
        .run()
        .success();
    let listed = sandbox
        .lease(["list", "--all", "--json"])
        .env("LEASE_STATE_DIR", &state)
        .run()
        .success()
        .json();
    let leases = listed.as_array().unwrap();
    assert_eq!(leases.len(), 3, "{listed}");
    assert!(leases.iter().all(|l| l["state"] == "revoked"), "{listed}");
}
