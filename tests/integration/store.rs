//! The store: private permissions, no token at rest or on any argv, refusal of unsafe state
//! dirs, and records that cannot be read failing closed.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::harness::Sandbox;

fn mode(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o777
}

#[test]
fn state_dir_is_0700_and_records_are_0600() {
    if crate::harness::files_only("about record files' modes") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.issue("a");
    sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .run()
        .success();
    assert_eq!(mode(&sandbox.state_dir()), 0o700);
    assert_eq!(mode(&sandbox.leases_dir()), 0o700);
    let files = sandbox.state_files();
    // A local run leaves an empty spare file for the next write; a broker prepares none.
    let spare = !crate::harness::broker_mode();
    assert_eq!(
        files.len(),
        3 + usize::from(spare),
        "two records, the audit log (and the spare): {files:?}"
    );
    assert_eq!(sandbox.leases_dir().join(".spare").is_file(), spare);
    assert!(sandbox.state_dir().join("audit.jsonl").is_file());
    for file in files {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
}

/// A umask that takes the owner's bits (0277, 0477) would leave the directories lease creates
/// 0500 or 0300 and its files 0400 or 0200: lease makes them 0700 and 0600, and the store
/// stays usable. Run as a user other than root where the test runs as root (root, who may
/// open and write anything, would not see a directory it cannot use).
#[test]
fn a_umask_that_takes_the_owners_bits_still_leaves_a_usable_private_state_dir() {
    if crate::harness::local_only("about the files a local lease creates") {
        return;
    }
    let sandbox = Sandbox::new();
    let nobody = nix::unistd::geteuid().is_root().then(Nobody::new);
    let base = nobody
        .as_ref()
        .map_or_else(|| sandbox.path("umasked"), |nobody| nobody.home.clone());
    for umask in ["277", "477"] {
        // A state dir two levels below any existing directory.
        let made = base.join(format!("made-{umask}"));
        let state = made.join("under/state");
        let script = format!(
            "umask {umask} && \"$0\" run --scope a -- true && \"$0\" run --scope a -- true && \"$0\" list --all --json"
        );
        let out = match &nobody {
            Some(nobody) => nobody.sh(&sandbox, &script),
            None => sandbox
                .sh(&script)
                .arg(crate::harness::lease_bin())
                .env("LEASE_STATE_DIR", &state),
        }
        .env("LEASE_STATE_DIR", &state)
        .run()
        .success();
        for dir in [
            made.clone(),
            made.join("under"),
            state.clone(),
            state.join("leases"),
        ] {
            assert_eq!(mode(&dir), 0o700, "umask {umask}: {}", dir.display());
        }
        let mut files = 0;
        for file in [state.join("audit.jsonl")].into_iter().chain(
            fs::read_dir(state.join("leases"))
                .unwrap()
                .map(|entry| entry.unwrap().path()),
        ) {
            assert_eq!(mode(&file), 0o600, "umask {umask}: {}", file.display());
            files += 1;
        }
        assert_eq!(files, 4, "the trail, two records and the spare");
        let listed = out.json();
        assert_eq!(listed.as_array().map(Vec::len), Some(2), "umask {umask}");
        assert_eq!(listed[0]["state"], "revoked", "umask {umask}");
    }
}

/// A home of uid 65534's (nobody) and a copy of lease it can run, for the tests that run lease
/// as a user other than root. Only root can make one.
struct Nobody {
    _base: tempfile::TempDir,
    home: std::path::PathBuf,
    bin: std::path::PathBuf,
    uid: u32,
}

impl Nobody {
    const UID: u32 = 65534;

    fn new() -> Nobody {
        Nobody::with_uid(Nobody::UID)
    }

    /// The same for `uid` (and the gid of the same number).
    fn with_uid(uid: u32) -> Nobody {
        use std::os::unix::fs::chown;
        let base = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755)).expect("mode");
        let home = base.path().join("home");
        fs::create_dir(&home).expect("home");
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).expect("mode");
        chown(&home, Some(uid), Some(uid)).expect("chown");
        // A copy of lease in a directory nobody can reach (the build's may be under a private
        // one).
        let bin = base.path().join("bin");
        fs::create_dir(&bin).expect("bin");
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("mode");
        fs::copy(crate::harness::lease_bin(), bin.join("lease")).expect("copy lease");
        Nobody {
            _base: base,
            home,
            bin: bin.join("lease"),
            uid,
        }
    }

    /// `lease ARGS` as nobody, in its home, with no config.
    fn lease<S: AsRef<std::ffi::OsStr>>(
        &self,
        sandbox: &Sandbox,
        args: impl IntoIterator<Item = S>,
    ) -> crate::harness::Cmd {
        self.setpriv(sandbox).arg(&self.bin).args(args)
    }

    /// `sh -c SCRIPT LEASE` as nobody, in its home, with no config: `$0` is lease.
    fn sh(&self, sandbox: &Sandbox, script: &str) -> crate::harness::Cmd {
        self.setpriv(sandbox)
            .args(["sh", "-c", script])
            .arg(&self.bin)
    }

    fn setpriv(&self, sandbox: &Sandbox) -> crate::harness::Cmd {
        let mut cmd = sandbox
            .command("setpriv")
            .arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.uid))
            .args(["--clear-groups", "--"])
            .env("HOME", &self.home)
            .env("LEASE_CONFIG", "/dev/null");
        cmd.command.current_dir(&self.home);
        cmd
    }
}

/// A uid that `/etc/passwd` does not hold (a container's arbitrary uid), without `$HOME`:
/// lease says it knows no home, and works with a state dir or `$XDG_STATE_HOME`; a config
/// naming a user or group the files do not hold is one error line. The release binary,
/// linked statically, crashed on each (the C library looked the account up through a module
/// it cannot load); `.ci/run` checks the installed binary the same way.
#[test]
fn an_account_the_files_do_not_hold_gets_a_line_not_a_crash() {
    if crate::harness::local_only("the accounts of the client's own machine") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        crate::harness::skip("not-root", "only root can run lease as another uid");
        return;
    }
    const UID: u32 = 54321;
    let passwd = fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    assert!(
        !passwd.lines().any(|l| l.split(':').nth(2) == Some("54321")),
        "uid {UID} has an entry here: choose another"
    );
    let sandbox = Sandbox::new();
    let stranger = Nobody::with_uid(UID);
    let homeless = |args: &[&str]| {
        stranger
            .lease(&sandbox, args)
            .env_remove("HOME")
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("LEASE_STATE_DIR")
    };
    let out = homeless(&["list"]).run().code_is(2).one_error_line();
    assert_eq!(
        out.stderr.trim_end(),
        "lease: cannot find a state dir: no home directory is known; set LEASE_STATE_DIR or pass --state-dir"
    );
    let state = stranger.home.join("state");
    homeless(&["issue", "--scope", "a:b"])
        .env("XDG_STATE_HOME", &state)
        .run()
        .success();
    assert!(
        state.join("lease/audit.jsonl").is_file(),
        "the store is under XDG_STATE_HOME"
    );
    let config = stranger.home.join("config.toml");
    for (text, error) in [
        (
            "operators = [\"no-such-user-here\"]\n",
            "operators: no user is called 'no-such-user-here' in /etc/passwd",
        ),
        (
            "socket_group = \"no-such-group-here\"\n",
            "socket_group: no group is called 'no-such-group-here' in /etc/group",
        ),
    ] {
        fs::write(&config, text).expect("config");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).expect("mode");
        let out = homeless(&["list"])
            .env("LEASE_CONFIG", &config)
            .env("LEASE_STATE_DIR", &state)
            .run()
            .code_is(2)
            .one_error_line();
        assert!(out.stderr.contains(error), "{out:?}");
    }
}

/// The inode of a file (not followed if a symlink).
fn inode(path: &std::path::Path) -> u64 {
    fs::symlink_metadata(path).unwrap().ino()
}

#[test]
fn a_run_revokes_into_a_file_it_made_while_its_command_started_and_leaves_one_for_the_next_run() {
    if crate::harness::local_only("about the files a local run writes") {
        return;
    }
    let sandbox = Sandbox::new();
    // The command finds the files its run makes while it starts (waiting for them, bounded:
    // they are made while it execs), and says which file the revoke is to fill.
    let out = sandbox
        .run_sh(
            "a",
            r#"cd "$1" || exit 3
            for _ in $(seq 500); do
                for f in .tmp-*; do
                    [ -e "$f" ] && [ -e .spare ] && { stat -c %i "$f"; exit 0; }
                done
                sleep 0.01
            done
            exit 4"#,
        )
        .arg("sh")
        .arg(sandbox.leases_dir())
        .run()
        .success();
    let prepared: u64 = out.stdout.trim().parse().expect("an inode");
    let run = &sandbox
        .lease(["list", "--all", "--json"])
        .run()
        .success()
        .json()[0];
    assert_eq!(run["state"], "revoked");
    assert_eq!(
        inode(&sandbox.record_path(&run["id"])),
        prepared,
        "the revoked record is the file made while the command started"
    );
    // The next write takes the spare: the next run's record is written in it (until its
    // revoke replaces it).
    let spare = inode(&sandbox.leases_dir().join(".spare"));
    let recorded_in = sandbox
        .run_sh("b", r#"stat -c %i "$1/$LEASE_ID.toml""#)
        .arg("sh")
        .arg(sandbox.leases_dir())
        .run()
        .success()
        .stdout;
    assert_eq!(recorded_in.trim().parse::<u64>().expect("an inode"), spare);
    let left: Vec<_> = fs::read_dir(sandbox.leases_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert_eq!(left, [".spare"], "no temporary file is left");
}

#[test]
fn default_state_dir_is_under_xdg_state_home() {
    if crate::harness::local_only("a client of a broker has no state dir") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox
        .run_sh("a", "echo $LEASE_STATE_DIR")
        .env_remove("LEASE_STATE_DIR")
        .run()
        .success();
    assert_eq!(mode(&sandbox.path("xdg-state/lease")), 0o700);
    let out = sandbox
        .run_sh("a", "echo $LEASE_STATE_DIR")
        .env_remove("LEASE_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .run()
        .success();
    assert_eq!(
        out.stdout.trim(),
        sandbox.path("home/.local/state/lease").to_str().unwrap()
    );
}

#[test]
fn the_token_is_in_no_file_and_on_no_argv() {
    let sandbox = Sandbox::new();
    let mut run = sandbox
        .run_sh("a", "echo $LEASE_TOKEN; read line; lease verify a")
        .start();
    let token = run.lines.expect("agt_");
    let secret = token.strip_prefix("agt_").unwrap();

    // While the run is live: no process's command line holds it, and no file in the store.
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            assert!(
                !contains(&cmdline, secret.as_bytes()),
                "token on the argv of {:?}",
                entry.path()
            );
        }
    }
    let assert_not_in_store = || {
        for file in sandbox.state_files() {
            let bytes = fs::read(&file).unwrap();
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "token in {}",
                file.display()
            );
        }
    };
    assert_not_in_store();

    use std::io::Write;
    run.child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(run.wait().code(), Some(0));
    assert_not_in_store();
    assert!(!sandbox.state_files().is_empty());
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn group_or_world_writable_state_dir_is_refused() {
    if crate::harness::local_only("it checks the local store's files") {
        return;
    }
    let sandbox = Sandbox::new();
    let token = sandbox.issue("a");
    fs::set_permissions(sandbox.state_dir(), fs::Permissions::from_mode(0o777)).unwrap();
    let shown = sandbox.state_dir().display().to_string();
    sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has(&shown)
        .stderr_has(&format!("chmod 700 {shown}"));
    sandbox.verify(&token, "a").code_is(2).stderr_has(&shown);
    for args in [
        &["list"][..],
        &["issue", "--scope", "a"],
        &["gc"],
        &["revoke", "--all"],
    ] {
        sandbox.lease(args).run().code_is(2).one_error_line();
    }
    fs::set_permissions(sandbox.state_dir(), fs::Permissions::from_mode(0o770)).unwrap();
    sandbox
        .lease(["list"])
        .run()
        .code_is(2)
        .stderr_has("group or others");
    // Readable by others is allowed (the store holds only hashes), writable is not.
    fs::set_permissions(sandbox.state_dir(), fs::Permissions::from_mode(0o755)).unwrap();
    sandbox.verify(&token, "a").success();
}

#[test]
fn state_dir_owned_by_someone_else_is_refused() {
    if crate::harness::local_only("it checks the local store's files") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        // Only root can hand a directory to another user; CI runs as root.
        crate::harness::skip("not-root", "only root can give a directory to another user");
        return;
    }
    let sandbox = Sandbox::new();
    fs::create_dir(sandbox.state_dir()).unwrap();
    fs::set_permissions(sandbox.state_dir(), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(sandbox.state_dir(), Some(65534), Some(65534)).unwrap();
    sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("owned by uid 65534");
}

#[test]
fn state_dir_that_is_a_file_is_an_error() {
    if crate::harness::local_only("it checks the local store's files") {
        return;
    }
    let sandbox = Sandbox::new();
    fs::write(sandbox.state_dir(), "not a dir").unwrap();
    sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has("not a directory");
    sandbox.lease(["list"]).run().code_is(2).one_error_line();
}

#[test]
fn a_corrupt_record_fails_closed_is_skipped_by_list_and_stops_nothing_else() {
    if crate::harness::local_only("it checks the local store's files") {
        return;
    }
    let sandbox = Sandbox::new();
    let broken = sandbox.issue_json("a", &[]);
    let healthy = sandbox.issue_json("a", &[]);
    let path = sandbox.record_path(&broken["id"]);
    for garbage in [
        &b""[..],
        b"state = \"active\"\n",
        b"\x00\xff\xfe binary",
        b"id = \"x\"\n[[[",
        &vec![b'#'; 100_000],
    ] {
        fs::write(&path, garbage).unwrap();
        sandbox
            .lease(["verify", "a"])
            .env("LEASE_TOKEN", broken["token"].as_str().unwrap())
            .run()
            .code_is(1)
            .one_error_line()
            .stderr_has("corrupt record");
        let listed = sandbox.lease(["list", "--json"]).run().success();
        assert!(
            listed.stderr.contains("warning: skipping lease"),
            "{listed:#?}"
        );
        let json = listed.json();
        let ids: Vec<&str> = json
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, [healthy["id"].as_str().unwrap()]);
        sandbox
            .lease(["run", "--scope", "b", "--", "lease", "verify", "b"])
            .run()
            .success();
    }
    // A valid record for another token, copied under this id, names another lease.
    let other = fs::read_to_string(sandbox.record_path(&healthy["id"])).unwrap();
    fs::write(&path, &other).unwrap();
    sandbox
        .lease(["verify", "a"])
        .env("LEASE_TOKEN", broken["token"].as_str().unwrap())
        .run()
        .code_is(1)
        .one_error_line()
        .stderr_has("denied: corrupt record");
    // Edited to carry this id as well (so that only the full SHA-256 tells them apart), it is
    // still not this token's lease.
    let (healthy_id, broken_id) = (
        healthy["id"].as_str().unwrap(),
        broken["id"].as_str().unwrap(),
    );
    fs::write(&path, other.replace(healthy_id, broken_id)).unwrap();
    sandbox
        .lease(["verify", "a"])
        .env("LEASE_TOKEN", broken["token"].as_str().unwrap())
        .run()
        .code_is(1)
        .one_error_line()
        .stderr_has("denied: unknown: no lease matches this token");
    // gc clears what cannot be read.
    fs::write(&path, "garbage").unwrap();
    let out = sandbox.lease(["gc"]).run().success();
    assert!(out.stderr.contains("removed unreadable lease"), "{out:#?}");
    assert!(!path.exists());
}

#[test]
fn a_symlinked_record_is_not_followed() {
    if crate::harness::local_only("it checks the local store's files") {
        return;
    }
    let sandbox = Sandbox::new();
    let issued = sandbox.issue_json("a", &[]);
    let path = sandbox.record_path(&issued["id"]);
    let elsewhere = sandbox.path("planted.toml");
    fs::rename(&path, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
    sandbox
        .lease(["verify", "a"])
        .env("LEASE_TOKEN", issued["token"].as_str().unwrap())
        .run()
        .code_is(1)
        .stderr_has("corrupt record");
}

#[test]
fn a_record_from_another_boot_is_owner_gone() {
    if crate::harness::files_only("edits a record file's boot id") {
        return;
    }
    let sandbox = Sandbox::new();
    let mut run = sandbox
        .run_sh("a", "echo $LEASE_ID $LEASE_TOKEN; read line")
        .start();
    let line = run.lines.expect("agt_");
    let (id, token) = line.split_once(' ').unwrap();
    sandbox.verify(token, "a").success();
    // The owner is alive, but the record says it was made before a reboot.
    let path = sandbox.record_path(&serde_json::json!(id));
    let record = fs::read_to_string(&path).unwrap();
    let boot_line = record.lines().find(|l| l.starts_with("boot_id")).unwrap();
    fs::write(
        &path,
        record.replace(
            boot_line,
            "boot_id = \"00000000-0000-0000-0000-000000000000\"",
        ),
    )
    .unwrap();
    sandbox
        .verify(token, "a")
        .code_is(1)
        .one_error_line()
        .stderr_has("owner gone");
    use std::io::Write;
    run.child
        .stdin
        .take()
        .unwrap()
        .write_all(b"done\n")
        .unwrap();
    run.wait();
}

#[test]
fn every_change_to_a_record_replaces_its_file_and_never_rewrites_it_in_place() {
    if crate::harness::files_only("about record files' inodes") {
        return;
    }
    // A record rewritten in place could be read torn or empty; a new file renamed over the old
    // one cannot. The inode tells which happened.
    use std::os::unix::fs::MetadataExt;
    let sandbox = Sandbox::new();
    let issued = sandbox.issue_json("a", &["--uses", "2"]);
    let token = issued["token"].as_str().unwrap();
    let path = sandbox.record_path(&issued["id"]);
    let inode = || fs::metadata(&path).unwrap().ino();
    // Each replaced file is kept open, so that its inode cannot be reused by a later one.
    let mut kept = vec![fs::File::open(&path).unwrap()];
    let mut seen = vec![inode()];
    let changes: [&dyn Fn(); 2] = [&|| drop(sandbox.verify(token, "a").success()), &|| {
        drop(
            sandbox
                .lease(["revoke", issued["id"].as_str().unwrap()])
                .run()
                .success(),
        )
    }];
    for change in changes {
        change();
        let now = inode();
        assert!(!seen.contains(&now), "rewritten in place (inode {now})");
        seen.push(now);
        kept.push(fs::File::open(&path).unwrap());
    }
    assert_eq!(
        sandbox.records()[issued["id"].as_str().unwrap()]["state"].as_str(),
        Some("revoked")
    );
}

/// A directory above the state dir that others can write lets them swap the store (or a
/// directory on its path) for their own: lease refuses it, naming it, before touching anything.
#[test]
fn a_group_or_world_writable_ancestor_is_refused_naming_it_unless_sticky() {
    if crate::harness::local_only("it checks the local store's files") {
        return;
    }
    let sandbox = Sandbox::new();
    let shared = sandbox.path("shared");
    fs::create_dir(&shared).unwrap();
    let state = shared.join("state");
    let token = issue_in(&sandbox, &state);
    let refused = format!(
        "lease: refusing state dir {state}: its parent {shared} is writable by group or others (mode 777) and not sticky: run 'chmod go-w {shared}' or choose another --state-dir\n",
        state = state.display(),
        shared = shared.display()
    );
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    sandbox
        .lease(["run", "--scope", "a", "--", "true"])
        .env("LEASE_STATE_DIR", &state)
        .run()
        .code_is(125)
        .stderr_is(&refused);
    sandbox
        .lease(["verify", "a"])
        .env("LEASE_STATE_DIR", &state)
        .env("LEASE_TOKEN", &token)
        .run()
        .code_is(2)
        .stderr_is(&refused.replace("lease: ", "lease: cannot verify: "));
    sandbox
        .lease(["list"])
        .env("LEASE_STATE_DIR", &state)
        .run()
        .code_is(2)
        .stderr_is(&refused);
    // Further up, the message names the directory above, and nothing is created under it.
    sandbox
        .lease(["issue", "--scope", "a"])
        .env("LEASE_STATE_DIR", shared.join("new/state"))
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has(&format!("the directory {} above it", shared.display()));
    assert!(!shared.join("new").exists());
    // Sticky, as /tmp is: others may add entries but not rename or remove ours.
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    sandbox
        .lease(["verify", "a"])
        .env("LEASE_STATE_DIR", &state)
        .env("LEASE_TOKEN", &token)
        .run()
        .success();
}

/// A record lease did not write as the user's private file is not trusted: it fails closed.
#[test]
fn a_record_open_to_others_or_owned_by_someone_else_is_corrupt() {
    if crate::harness::local_only("it checks the local store's files") {
        return;
    }
    let sandbox = Sandbox::new();
    let issued = sandbox.issue_json("a", &[]);
    let token = issued["token"].as_str().unwrap();
    let path = sandbox.record_path(&issued["id"]);
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    sandbox
        .verify(token, "a")
        .code_is(1)
        .one_error_line()
        .stderr_has("corrupt record")
        .stderr_has("record is open to group or others (mode 644, not 600)");
    let listed = sandbox.lease(["list"]).run().success();
    assert!(
        listed.stderr.contains("warning: skipping lease"),
        "{listed:#?}"
    );
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    sandbox.verify(token, "a").success();
    if !nix::unistd::geteuid().is_root() {
        crate::harness::skip("not-root", "only root can give a file away");
        return;
    }
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    sandbox
        .verify(token, "a")
        .code_is(1)
        .one_error_line()
        .stderr_has("corrupt record")
        .stderr_has("record is owned by uid 65534, not by you (uid 0)");
}

/// A local user who can rename entries in a directory above the store swaps the state dir for
/// a copy of their own (holding a forged record) while `lease verify` runs. lease opens the
/// state dir once and works relative to that handle, so whatever it checked is what it reads:
/// the forged record is never granted.
#[test]
fn swapping_the_state_dir_under_verify_never_grants_a_forged_record() {
    if crate::harness::local_only("it swaps the local store under verify") {
        return;
    }
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    if !nix::unistd::geteuid().is_root() {
        // The attacker's copy must belong to another user.
        crate::harness::skip("not-root", "only root can give a file away");
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.issue("a");
    let attacker = sandbox.path("attacker");
    let forged = issue_in(&sandbox, &attacker);
    chown_tree(&attacker, 65534);
    // The forged token is good in the attacker's store and unknown in ours.
    sandbox.verify(&forged, "a").code_is(1);

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, state, attacker) = (stop.clone(), sandbox.state_dir(), attacker.clone());
        std::thread::spawn(move || {
            use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
            let exchange = || {
                renameat2(
                    AT_FDCWD,
                    &state,
                    AT_FDCWD,
                    &attacker,
                    RenameFlags::RENAME_EXCHANGE,
                )
                .expect("exchange");
            };
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                exchange();
                swaps += 1;
            }
            if swaps % 2 == 1 {
                exchange();
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut tries, mut grants) = (0, 0);
    while tries < 1500 && Instant::now() < deadline {
        tries += 1;
        if sandbox.verify(&forged, "a").code() == Some(0) {
            grants += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper");
    eprintln!("{grants} grants in {tries} tries");
    assert!(tries >= 100, "only {tries} tries in 10 s");
    assert_eq!(
        grants, 0,
        "a forged record was granted {grants} times in {tries} tries"
    );
}

/// Mints a detached lease with scope `a` in the store at `state_dir`; returns its token.
fn issue_in(sandbox: &Sandbox, state_dir: &std::path::Path) -> String {
    let out = sandbox
        .lease(["issue", "--scope", "a"])
        .env("LEASE_STATE_DIR", state_dir)
        .run()
        .success();
    out.stdout.trim().to_owned()
}

fn chown_tree(path: &std::path::Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

/// The checks on the state dir and its parents hold for any user, not only root: a user's own
/// directories pass (a bug in the owner rule would refuse them, which root, who owns
/// everything, never sees) and another user's do not.
#[test]
fn a_user_other_than_root_keeps_a_store_in_their_own_directory() {
    use std::os::unix::fs::chown;
    if crate::harness::local_only("the store of a user other than the broker's") {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        crate::harness::skip("not-root", "only root can run lease as another uid");
        return;
    }
    let nobody = Nobody::new();
    let home = nobody.home.clone();
    let as_nobody = |state: &std::path::Path| {
        let sandbox = Sandbox::new();
        nobody
            .lease(&sandbox, ["--state-dir".as_ref(), state.as_os_str()])
            .args(["issue", "--scope", "a"])
            .run()
    };
    let out = as_nobody(&home.join("state"));
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(home.join("state/leases").is_dir());
    // A symbolic link of the user's own on the way is followed; one of another user's is not.
    let real = home.join("real");
    fs::create_dir(&real).expect("dir");
    chown(&real, Some(65534), Some(65534)).expect("chown");
    for (link, owner) in [("mine", 65534), ("theirs-link", 65533)] {
        std::os::unix::fs::symlink(&real, home.join(link)).expect("symlink");
        std::os::unix::fs::lchown(home.join(link), Some(owner), Some(owner)).expect("lchown");
    }
    let out = as_nobody(&home.join("mine/state"));
    assert_eq!(out.code(), Some(0), "{out:#?}");
    assert!(real.join("state/leases").is_dir());
    let out = as_nobody(&home.join("theirs-link/state"));
    assert_eq!(
        out.stderr,
        format!(
            "lease: refusing state dir {}: the symbolic link {} on its path is owned by uid 65533, neither you (uid 65534) nor root: use a directory of your own with --state-dir or LEASE_STATE_DIR\n",
            home.join("theirs-link/state").display(),
            home.join("theirs-link").display()
        )
    );
    // Above it, a directory of another user's is refused (a directory of root's, or the
    // user's own, that others cannot write passes, as the first store shows).
    let theirs = nobody.home.parent().expect("base").join("theirs");
    fs::create_dir(&theirs).expect("dir");
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o755)).expect("mode");
    chown(&theirs, Some(65533), Some(65533)).expect("chown");
    let out = as_nobody(&theirs.join("state"));
    assert_eq!(out.code(), Some(2), "{out:#?}");
    assert_eq!(
        out.stderr,
        format!(
            "lease: refusing state dir {}: its parent {} is owned by uid 65533, neither you (uid 65534) nor root: use a directory of your own with --state-dir or LEASE_STATE_DIR\n",
            theirs.join("state").display(),
            theirs.display()
        )
    );
}
