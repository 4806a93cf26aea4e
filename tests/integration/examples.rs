//! The shipped examples, run for real: make, sh, python3, and the CI job definitions' steps.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use crate::harness::{Cmd, Out, Sandbox, lease_bin};

/// PATH on a fresh CI runner or a user's machine without lease installed: the system's tools
/// only, so a script that does not say where lease is fails to find it.
const SYSTEM_PATH: &str = "/usr/bin:/bin";

/// `cmd` with PATH set to [`SYSTEM_PATH`], after checking that lease is not there.
fn without_lease_on_path(cmd: Cmd) -> Cmd {
    for dir in SYSTEM_PATH.split(':') {
        assert!(
            !Path::new(dir).join("lease").exists(),
            "lease is installed in {dir}: these tests need a PATH without it"
        );
    }
    cmd.env("PATH", SYSTEM_PATH)
}

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
fn makefile_passes_the_lease_variable_on_to_its_recipes_and_the_gate() {
    let sandbox = Sandbox::new();
    let out = without_lease_on_path(sandbox.command("make"))
        .arg("-f")
        .arg(example("Makefile"))
        .arg(format!("LEASE={}", lease_bin().display()))
        .run();
    assert_eq!(out.code(), Some(0), "{out:#?}");
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

/// A script that asks the gate for a granted action, then for one out of scope.
fn gate_script() -> String {
    format!(
        "{g} write:draft echo ran-granted; {g} write:prod echo ran-denied; echo denied=$?",
        g = example("gate.py").display()
    )
}

#[test]
fn gate_runs_granted_actions_and_refuses_others() {
    let sandbox = Sandbox::new();
    let script = gate_script();
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
        .command(example("gate.py"))
        .arg("read:x")
        .arg("true")
        .run()
        .code_is(2);
    // A granted command that is not there: one line and 127, as a shell says it.
    let missing = format!(
        "{} write:draft no-such-command-here; echo status=$?",
        example("gate.py").display()
    );
    let out = sandbox.run_sh("write:draft", &missing).run().success();
    assert_eq!(out.stdout, "status=127\n", "{out:#?}");
    assert_eq!(
        out.stderr,
        "gate: cannot run no-such-command-here: No such file or directory\n"
    );
}

#[test]
fn gate_runs_the_lease_binary_named_by_lease_when_lease_is_not_on_path() {
    let sandbox = Sandbox::new();
    let script = gate_script();
    let out = without_lease_on_path(sandbox.run_sh("write:draft", &script))
        .env("LEASE", lease_bin())
        .run()
        .success();
    assert_eq!(out.stdout, "ran-granted\ndenied=1\n", "{out:#?}");
    assert_eq!(out.stderr, "gate: write:prod refused: out of scope\n");
    // Without LEASE, and lease not on PATH, the gate cannot decide, and says why in one line.
    let out = without_lease_on_path(sandbox.run_sh("write:draft", &script))
        .run()
        .success();
    assert_eq!(out.stdout, "denied=2\n", "{out:#?}");
    assert_eq!(
        out.stderr,
        "gate: cannot run lease: No such file or directory: set LEASE to its path\n\
         gate: cannot run lease: No such file or directory: set LEASE to its path\n"
    );
}

/// A CI job's project: stand-ins for the scripts the job definitions call, each checking with
/// `lease verify` that it was handed the right lease, and for lease's `install.sh` (which
/// `.ci/run` runs for real): it puts lease where the real one does, in `~/.local/bin`.
fn ci_project(sandbox: &Sandbox) -> PathBuf {
    let project = sandbox.path("project");
    std::fs::create_dir_all(&project).unwrap();
    let install = format!(
        "mkdir -p \"$HOME/.local/bin\" && ln -sf '{}' \"$HOME/.local/bin/lease\"",
        lease_bin().display()
    );
    let scripts = [
        ("install.sh", install.as_str()),
        (
            "fetch-artifacts.sh",
            "lease verify read:artifacts && ( lease verify deploy:staging 2>/dev/null; [ $? -eq 1 ] ) && echo fetched",
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

/// A job's shell, as the CI runner starts it: bash with errexit and pipefail, in the project,
/// with only the system's PATH, and the job's variables.
fn job_shell(
    sandbox: &Sandbox,
    project: &Path,
    variables: &[(String, String)],
    script: &str,
) -> Cmd {
    let mut cmd = without_lease_on_path(sandbox.command("bash"))
        .arg("--noprofile")
        .arg("--norc")
        .arg("-eo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .command_dir(project);
    for (name, value) in variables {
        cmd = cmd.env(name, value);
    }
    cmd
}

/// Runs GitHub Actions steps in order, each in a shell of its own, as the runner does: what a
/// step writes to `$GITHUB_PATH` and `$GITHUB_ENV` is in the PATH and environment of every
/// later step, and nothing else is. `env` is the job's environment. Returns the output.
fn run_steps(
    sandbox: &Sandbox,
    project: &Path,
    env: &[(String, String)],
    steps: &[String],
) -> String {
    let github_env = sandbox.path("github-env");
    let github_path = sandbox.path("github-path");
    let mut carried: Vec<(String, String)> = env.to_vec();
    let mut path: Vec<String> = Vec::new();
    let mut output = String::new();
    for step in steps {
        std::fs::write(&github_env, "").unwrap();
        std::fs::write(&github_path, "").unwrap();
        let mut variables = carried.clone();
        variables.push(("GITHUB_ENV".into(), github_env.display().to_string()));
        variables.push(("GITHUB_PATH".into(), github_path.display().to_string()));
        let mut cmd = job_shell(sandbox, project, &variables, step);
        if !path.is_empty() {
            cmd = cmd.env("PATH", format!("{}:{SYSTEM_PATH}", path.join(":")));
        }
        let out = cmd.run();
        assert_eq!(out.code(), Some(0), "step {step:?}: {out:#?}");
        output += &out.stdout;
        output += &out.stderr;
        for line in std::fs::read_to_string(&github_env).unwrap().lines() {
            let (name, value) = line.split_once('=').expect("NAME=value");
            carried.push((name.to_owned(), value.to_owned()));
        }
        for line in std::fs::read_to_string(&github_path).unwrap().lines() {
            path.insert(0, line.to_owned());
        }
    }
    output
}

fn yaml(name: &str) -> Yaml {
    let text = std::fs::read_to_string(example(name)).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// Every lease in the store at `state`, as `lease list --all --json` shows it.
fn listed(sandbox: &Sandbox, state: &Path) -> Vec<serde_json::Value> {
    let listed = sandbox
        .lease(["list", "--all", "--json"])
        .env("LEASE_STATE_DIR", state)
        .run()
        .success()
        .json();
    listed.as_array().unwrap().clone()
}

/// A lease another job holds in the same store, which this job must leave alone.
fn other_jobs_lease(sandbox: &Sandbox, state: &Path) -> serde_json::Value {
    sandbox
        .lease(["issue", "--scope", "deploy:prod", "--json"])
        .env("LEASE_STATE_DIR", state)
        .run()
        .success()
        .json()["id"]
        .clone()
}

/// Asserts that the store holds the other job's lease, still active, and this job's three
/// leases (its own and one per acting command, nested in it), all revoked.
#[track_caller]
fn assert_only_the_jobs_leases_were_revoked(
    leases: &[serde_json::Value],
    other: &serde_json::Value,
) {
    let summary: Vec<String> = leases
        .iter()
        .map(|l| format!("{} {} parent={}", l["id"], l["state"], l["parent"]))
        .collect();
    assert_eq!(
        leases.len(),
        4,
        "the other job's lease, and the job's three: {summary:#?}"
    );
    let (others, job): (Vec<_>, Vec<_>) = leases.iter().partition(|l| l["id"] == *other);
    assert_eq!(others[0]["state"], "active", "{summary:#?}");
    assert!(job.iter().all(|l| l["state"] == "revoked"), "{summary:#?}");
    let root = job
        .iter()
        .find(|l| l["parent"].is_null())
        .expect("the job's lease");
    assert_eq!(
        job.iter().filter(|l| l["parent"] == root["id"]).count(),
        2,
        "command leases nest in the job's: {summary:#?}"
    );
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
    let other = other_jobs_lease(&sandbox, Path::new(&state));
    let output = run_steps(
        &sandbox,
        &project,
        &[("LEASE_STATE_DIR".into(), state.clone())],
        &steps,
    );
    assert!(output.contains("fetched"), "{output}");
    assert!(
        output.contains("deployed to staging with ***"),
        "the deploy step masks its token: {output}"
    );
    assert_only_the_jobs_leases_were_revoked(&listed(&sandbox, Path::new(&state)), &other);
}

#[test]
fn gitlab_ci_job_revokes_its_lease_in_an_after_script_of_its_own() {
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
    // The job's variables, expanded as GitLab does, and the predefined one they use.
    let project_dir = project.to_str().unwrap();
    let mut variables = vec![("CI_PROJECT_DIR".to_owned(), project_dir.to_owned())];
    for (name, value) in job["variables"].as_hash().unwrap() {
        let value = value
            .as_str()
            .unwrap()
            .replace("$CI_PROJECT_DIR", project_dir);
        variables.push((name.as_str().unwrap().to_owned(), value));
    }
    let state = project.join(".lease");
    assert!(variables.contains(&("LEASE_STATE_DIR".into(), state.display().to_string())));
    let other = other_jobs_lease(&sandbox, &state);

    // before_script and script share one shell.
    let main = [lines("before_script"), lines("script")]
        .concat()
        .join("\n");
    let out = job_shell(&sandbox, &project, &variables, &main).run();
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(
        out.stdout.contains("fetched") && out.stdout.contains("deployed to staging with ***"),
        "{out:#?}"
    );
    let before = listed(&sandbox, &state);
    let job_lease = before
        .iter()
        .find(|l| l["parent"].is_null() && l["id"] != other)
        .expect("the job's lease");
    assert_eq!(job_lease["state"], "active", "{before:#?}");

    // after_script runs in a fresh shell, with the job's variables and nothing the others
    // exported: neither PATH nor LEASE_TOKEN.
    let after = lines("after_script").join("\n");
    let out: Out = job_shell(&sandbox, &project, &variables, &after).run();
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    assert_only_the_jobs_leases_were_revoked(&listed(&sandbox, &state), &other);
}
