//! A small harness: each test gets a sandbox (its own state dir, config home and HOME), runs
//! the real `lease` binary in it, and asserts on status, stdout and stderr.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::{Duration, Instant};

/// How long a test waits for an event before failing.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub fn lease_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lease"))
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A private directory tree standing in for one user's machine.
pub struct Sandbox {
    dir: tempfile::TempDir,
    /// In broker mode, the sandbox's own `lease serve`.
    broker: Option<SandboxBroker>,
    /// With `LEASE_TEST_STORE`, the store URL (with the sandbox's prefix) its broker is on.
    store: Option<String>,
}

/// The switch that runs the suite against a broker: `LEASE_TEST_MODE=broker scripts/test.sh`.
/// Every sandbox then starts its own `lease serve` on its state dir, and every command a test
/// runs gets `LEASE_BROKER` pointing at it.
pub fn broker_mode() -> bool {
    std::env::var("LEASE_TEST_MODE").is_ok_and(|mode| mode == "broker")
}

/// With `LEASE_TEST_STORE=etcd://HOST:PORT` (broker mode), every sandbox's broker keeps its
/// leases on that etcd, under a prefix of the sandbox's own: the whole suite then runs on the
/// shared store (.ci/run starts the etcd).
fn shared_store() -> Option<String> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let url = std::env::var("LEASE_TEST_STORE").ok()?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Some(format!("{url}/sandbox-{}-{n}", std::process::id()))
}

/// Whether the suite runs on a shared store (`LEASE_TEST_STORE`), where no record is a file.
pub fn shared_store_mode() -> bool {
    broker_mode() && std::env::var_os("LEASE_TEST_STORE").is_some()
}

/// On a shared store (`LEASE_TEST_STORE`), marks the rest of a test as one about the local
/// store's files (their modes, their locks, a record edited or corrupted by hand), for `why`;
/// the caller returns when this is true.
pub fn files_only(why: &str) -> bool {
    if !shared_store_mode() {
        return false;
    }
    let test = thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr(), "FILES ONLY {test}: {why}");
    true
}

/// In broker mode, marks the rest of a test as one that runs against the local store only, for
/// `why`, where the run shows it; the caller returns when this is true. Each call is a decision
/// recorded in the test itself: "not through the broker yet" names what issue 11 has left.
pub fn local_only(why: &str) -> bool {
    if !broker_mode()
        || (std::env::var_os("LEASE_TEST_TRIAGE").is_some() && why.contains("triaged"))
    {
        return false;
    }
    let test = thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr(), "LOCAL ONLY {test}: {why}");
    true
}

/// A sandbox's broker, and its log (read to know it is listening, and that it reloaded).
struct SandboxBroker {
    child: Child,
    log: std::sync::Mutex<Lines>,
}

impl Drop for SandboxBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("temp dir");
        for sub in ["home", "config"] {
            fs::create_dir(dir.path().join(sub)).expect("sandbox dirs");
        }
        let mut sandbox = Sandbox {
            dir,
            broker: None,
            store: shared_store(),
        };
        if broker_mode() {
            let mut command = Command::new(lease_bin());
            sandbox.environment(&mut command);
            command
                .args(["serve", "--listen"])
                .arg(format!("unix:{}", sandbox.broker_socket().display()));
            if let Some(url) = &sandbox.store {
                command.arg("--store").arg(url);
            }
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = command.spawn().expect("spawn the sandbox's broker");
            let mut log = Lines::from(child.stderr.take().expect("stderr"));
            log.expect("listening on");
            sandbox.broker = Some(SandboxBroker {
                child,
                log: std::sync::Mutex::new(log),
            });
        }
        sandbox
    }

    fn broker_socket(&self) -> PathBuf {
        self.path("sandbox-broker.sock")
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// The events of the trail (`audit.jsonl`), each a whole JSON line; none without a trail.
    pub fn trail(&self) -> Vec<serde_json::Value> {
        let text = fs::read_to_string(self.state_dir().join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a whole JSON line ({e}): {l:?}"))
            })
            .collect()
    }

    pub fn leases_dir(&self) -> PathBuf {
        self.state_dir().join("leases")
    }

    /// Writes the default config file ($XDG_CONFIG_HOME/lease/config.toml).
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.path("config/lease/config.toml");
        fs::create_dir_all(path.parent().expect("parent")).expect("config dir");
        fs::write(&path, text).expect("config");
        if let Some(broker) = &self.broker {
            // The broker reads its config again, as `systemctl reload` would have it do.
            let pid = nix::unistd::Pid::from_raw(i32::try_from(broker.child.id()).expect("pid"));
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
            let mut log = broker
                .log
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            log.expect_that("a reload", |l| {
                l.contains("reloaded the config") || l.contains("reload failed")
            });
        }
        path
    }

    /// `program` with this sandbox's environment and nothing else of the caller's, except
    /// PATH (with lease's own directory first).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Cmd {
        let mut command = Command::new(program);
        self.environment(&mut command);
        Cmd {
            command,
            stdin: None,
        }
    }

    /// The `lease` binary with these arguments.
    pub fn lease<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(lease_bin());
        cmd.command.args(args);
        cmd
    }

    /// `lease run --scope SCOPE -- sh -c SCRIPT`.
    pub fn run_sh(&self, scope: &str, script: &str) -> Cmd {
        self.lease(["run", "--scope", scope, "--", "sh", "-c", script])
    }

    /// The entry of lease `id` in `lease list --all --json`.
    /// The state of every lease `list --all --json` shows, in its order.
    pub fn states(&self) -> Vec<String> {
        let all = self
            .lease(["list", "--all", "--json"])
            .run()
            .success()
            .json();
        all.as_array()
            .expect("array")
            .iter()
            .map(|l| l["state"].as_str().expect("state").to_owned())
            .collect()
    }

    pub fn listed(&self, id: &serde_json::Value) -> serde_json::Value {
        let all = self
            .lease(["list", "--all", "--json"])
            .run()
            .success()
            .json();
        let entry = all
            .as_array()
            .expect("array")
            .iter()
            .find(|e| e["id"] == *id);
        entry
            .unwrap_or_else(|| panic!("{id} is not listed: {all}"))
            .clone()
    }

    /// `sh -c SCRIPT`, with `lease` on PATH.
    pub fn sh(&self, script: &str) -> Cmd {
        self.command("sh").arg("-c").arg(script)
    }

    fn environment(&self, command: &mut Command) {
        let bin_dir = lease_bin().parent().expect("bin dir");
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        command
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("XDG_STATE_HOME", self.path("xdg-state"))
            .env("LEASE_STATE_DIR", self.state_dir())
            .env("LANG", "C.UTF-8")
            .current_dir(self.dir.path());
        if self.broker.is_some() {
            command.env(
                "LEASE_BROKER",
                format!("unix:{}", self.broker_socket().display()),
            );
        }
        default_signal_dispositions(command);
    }

    /// Every lease record on disk and, on a shared store, there too, parsed, by id.
    pub fn records(&self) -> BTreeMap<String, toml::Table> {
        let mut records = self.store.as_deref().map(etcd_records).unwrap_or_default();
        let Ok(entries) = fs::read_dir(self.leases_dir()) else {
            return records;
        };
        let on_disk: BTreeMap<String, toml::Table> = entries
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .map(|p| {
                let text = fs::read_to_string(&p).expect("record");
                let id = p.file_stem().expect("stem").to_string_lossy().into_owned();
                (id, text.parse::<toml::Table>().expect("record parses"))
            })
            .collect();
        records.extend(on_disk);
        records
    }

    /// Writes records (id, TOML text) straight into the store, as new: files of mode 0600 in
    /// the state dir, or keys on the shared store.
    pub fn put_records(&self, records: &[(String, String)]) {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(url) = &self.store {
            for batch in records.chunks(100) {
                etcd_put(url, batch);
            }
            return;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.leases_dir())
            .expect("leases dir");
        for (id, text) in records {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.leases_dir().join(format!("{id}.toml")))
                .and_then(|mut file| file.write_all(text.as_bytes()))
                .expect("record file");
        }
    }

    /// With `LEASE_TEST_STORE`, the store (with this sandbox's prefix) its brokers are on.
    pub fn store_url(&self) -> Option<&str> {
        self.store.as_deref()
    }

    /// Every file under the state dir (recursively).
    pub fn state_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(&self.state_dir(), &mut files);
        files
    }

    /// Mints a detached lease and returns its token.
    pub fn issue(&self, scope: &str) -> String {
        let out = self.lease(["issue", "--scope", scope]).run().success();
        out.stdout.trim().to_owned()
    }

    /// Mints a detached lease with `issue --json` and these extra arguments.
    pub fn issue_json(&self, scope: &str, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["issue", "--scope", scope, "--json"];
        args.extend(extra);
        self.lease(args).run().success().json()
    }

    /// `lease verify ACTION` with `token` in LEASE_TOKEN.
    pub fn verify(&self, token: &str, action: &str) -> Out {
        self.lease(["verify", action])
            .env("LEASE_TOKEN", token)
            .run()
    }

    /// The record file of a lease.
    pub fn record_path(&self, id: &serde_json::Value) -> PathBuf {
        self.leases_dir()
            .join(format!("{}.toml", id.as_str().expect("id")))
    }

    /// Asserts that exactly `count` leases are on record and that every one was revoked.
    #[track_caller]
    pub fn assert_all_revoked(&self, count: usize) {
        let records = self.records();
        assert_eq!(records.len(), count, "leases on record: {records:#?}");
        for (id, record) in &records {
            assert_eq!(
                record["state"].as_str(),
                Some("revoked"),
                "lease {id} is not revoked: {record:#?}"
            );
        }
    }
}

/// The host and the prefix of the records' keys of a store URL (`etcd://HOST:PORT/PREFIX`).
fn etcd_keys(url: &str) -> (&str, String) {
    let rest = url.strip_prefix("etcd://").expect("an etcd:// store");
    let (host, prefix) = rest.split_once('/').expect("a prefix");
    (host, format!("{prefix}/leases/"))
}

/// POSTs `body` to etcd's JSON gateway at `host`, `path` (`/v3/kv/range`...).
fn etcd_gateway(host: &str, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-X",
            "POST",
            "--data-binary",
            "@-",
        ])
        .arg(format!("http://{host}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut curl| {
            if let Some(mut stdin) = curl.stdin.take() {
                stdin.write_all(body.to_string().as_bytes())?;
            }
            curl.wait_with_output()
        })
        .expect("curl");
    serde_json::from_slice(&out.stdout).expect("etcd answers JSON")
}

/// Puts records (id, text) on the store at `url` in one transaction.
fn etcd_put(url: &str, records: &[(String, String)]) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (host, keys) = etcd_keys(url);
    let puts: Vec<serde_json::Value> = records
        .iter()
        .map(|(id, text)| {
            let key = format!("{keys}{id}");
            serde_json::json!({"request_put": {"key": b64.encode(key), "value": b64.encode(text)}})
        })
        .collect();
    let answer = etcd_gateway(host, "/v3/kv/txn", &serde_json::json!({ "success": puts }));
    assert_eq!(answer["succeeded"], true, "{answer}");
}

/// Every record under the store URL `url`, read through etcd's own JSON gateway, by id.
fn etcd_records(url: &str) -> BTreeMap<String, toml::Table> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (host, keys) = etcd_keys(url);
    let end = format!("{}0", keys.trim_end_matches('/'));
    let body = serde_json::json!({"key": b64.encode(&keys), "range_end": b64.encode(&end)});
    let answer = etcd_gateway(host, "/v3/kv/range", &body);
    let mut records = BTreeMap::new();
    for kv in answer["kvs"].as_array().into_iter().flatten() {
        let key = b64
            .decode(kv["key"].as_str().expect("key"))
            .expect("base64");
        let key = String::from_utf8(key).expect("UTF-8 key");
        let Some(id) = key.strip_prefix(&keys).filter(|id| !id.contains('/')) else {
            continue;
        };
        let value = b64
            .decode(kv["value"].as_str().expect("value"))
            .expect("base64");
        let text = String::from_utf8(value).expect("UTF-8 record");
        records.insert(
            id.to_owned(),
            text.parse::<toml::Table>().expect("record parses"),
        );
    }
    records
}

/// Starts `command` with every signal at its default disposition, as from a fresh login shell:
/// the suite must pass however it is launched (`nohup`, a script with `trap '' INT`), and lease
/// keeps signals that it finds ignored ignored for its child, which would change what the
/// signal tests see.
#[allow(unsafe_code)]
fn default_signal_dispositions(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls sigaction, which is
    // async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            for signal in nix::sys::signal::Signal::iterator() {
                if !matches!(
                    signal,
                    nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP
                ) {
                    nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl)?;
                }
            }
            Ok(())
        });
    }
}

/// The (action, granted) pairs of a receipt's decisions, in order.
pub fn receipt_decisions(receipt: &serde_json::Value) -> Vec<(String, bool)> {
    let decisions = receipt["decisions"].as_array().expect("decisions");
    decisions
        .iter()
        .map(|d| {
            (
                d["action"].as_str().expect("action").to_owned(),
                d["granted"] == true,
            )
        })
        .collect()
}

/// The config example in the README's Policy section: the one source of the example config.
pub fn readme_policy_example() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let policy = &readme[readme.find("## Policy").expect("a Policy section")..];
    let start = policy.find("```toml\n").expect("a toml block") + "```toml\n".len();
    policy[start..start + policy[start..].find("```").expect("end of block")].to_owned()
}

/// Sleeps until the RFC 3339 time `at` (a lease's `expires_at`) has passed.
pub fn wait_until_past(at: &serde_json::Value) {
    let at = humantime::parse_rfc3339(at.as_str().expect("time")).expect("RFC 3339");
    if let Ok(left) = at.duration_since(std::time::SystemTime::now()) {
        thread::sleep(left + Duration::from_millis(50));
    }
}

/// A command about to run.
pub struct Cmd {
    pub command: Command,
    stdin: Option<Vec<u8>>,
}

impl Cmd {
    /// Appends an argument (for the command after `--`, say).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.command.arg(arg);
        self
    }

    /// Appends arguments.
    pub fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Cmd {
        self.command.args(args);
        self
    }

    pub fn env(mut self, name: &str, value: impl AsRef<OsStr>) -> Cmd {
        self.command.env(name, value);
        self
    }

    /// Runs in `dir` instead of the sandbox's root.
    pub fn command_dir(mut self, dir: &Path) -> Cmd {
        self.command.current_dir(dir);
        self
    }

    pub fn env_remove(mut self, name: &str) -> Cmd {
        self.command.env_remove(name);
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(bytes.into());
        self
    }

    /// Runs to completion (failing the test if it takes longer than PATIENCE).
    pub fn run(mut self) -> Out {
        self.command
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.command.spawn().expect("spawn");
        if let Some(bytes) = self.stdin.take() {
            let mut stdin = child.stdin.take().expect("stdin");
            thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let out_thread = thread::spawn(move || read_lossy(&mut stdout));
        let err_thread = thread::spawn(move || read_lossy(&mut stderr));
        let status = wait_for_exit(&mut child);
        Out {
            status,
            stdout: out_thread.join().expect("stdout thread"),
            stderr: err_thread.join().expect("stderr thread"),
        }
    }

    /// Starts it with stdout readable line by line; stderr is collected.
    pub fn start(mut self) -> Running {
        self.command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.command.spawn().expect("spawn");
        let lines = Lines::from(child.stdout.take().expect("stdout"));
        Running { child, lines }
    }
}

fn read_lossy(reader: &mut impl Read) -> String {
    let mut bytes = Vec::new();
    let _ = reader.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A finished command.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    #[track_caller]
    pub fn success(self) -> Out {
        self.code_is(0)
    }

    #[track_caller]
    pub fn code_is(self, code: i32) -> Out {
        assert_eq!(self.code(), Some(code), "unexpected status: {self:#?}");
        self
    }

    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Out {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}: {self:#?}"
        );
        self
    }

    /// stderr is exactly `expected`.
    #[track_caller]
    pub fn stderr_is(self, expected: &str) -> Out {
        assert_eq!(self.stderr, expected, "unexpected stderr: {self:#?}");
        self
    }

    /// Neither stream shows `token`, nor the part after its `agt_` prefix.
    #[track_caller]
    pub fn lacks_token(self, token: &str) -> Out {
        let body = token.strip_prefix("agt_").unwrap_or(token);
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            assert!(!text.contains(body), "{name} shows the token: {self:#?}");
        }
        self
    }

    /// stderr is exactly one `lease: ...` line.
    #[track_caller]
    pub fn one_error_line(self) -> Out {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:#?}");
        assert!(lines[0].starts_with("lease: "), "{self:#?}");
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// Lines of a child's output, read on a thread so that waiting for one can time out.
pub struct Lines {
    rx: Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    pub fn from(reader: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = channel();
        thread::spawn(move || {
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for the next line that contains `needle`, returning it.
    #[track_caller]
    pub fn expect(&mut self, needle: &str) -> String {
        self.expect_that(needle, |line| line.contains(needle))
    }

    /// Waits for the next line for which `wanted` holds; `what` describes it in a failure.
    #[track_caller]
    pub fn expect_that(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no line {what:?}; saw {:?}", self.seen),
            }
        }
    }

    /// The lines seen so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Every line until the writer closes the stream.
    pub fn rest(mut self) -> Vec<String> {
        while let Ok(line) = self.rx.recv_timeout(PATIENCE) {
            self.seen.push(line);
        }
        self.seen
    }
}

/// A started command.
pub struct Running {
    pub child: Child,
    pub lines: Lines,
}

impl Running {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("kill");
    }

    /// Sends signal number `signal` (a real-time one, say, which has no `Signal`).
    #[allow(unsafe_code)]
    pub fn send(&self, signal: i32) {
        // SAFETY: kill takes any pid and signal number.
        let sent = unsafe { nix::libc::kill(self.pid(), signal) };
        assert_eq!(
            sent,
            0,
            "kill {signal}: {}",
            std::io::Error::last_os_error()
        );
    }

    pub fn wait(&mut self) -> ExitStatus {
        wait_for_exit(&mut self.child)
    }
}

/// Waits until `path` holds something (a command wrote it) and returns its content.
pub fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if let Ok(text) = fs::read_to_string(path)
            && !text.is_empty()
        {
            return text;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", path.display());
}

/// Waits for a child to exit, failing the test after PATIENCE.
pub fn wait_for_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {PATIENCE:?}", child.id());
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The signal a status reports a death by, if any.
pub fn death_signal(status: ExitStatus) -> Option<i32> {
    status.signal()
}

/// Kills a process by pid, ignoring "no such process".
pub fn kill_pid(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Pids of live (non-zombie) processes whose environment carries this sandbox's state dir:
/// lease processes of this sandbox and the children they started.
pub fn live_children_of(sandbox: &Sandbox) -> Vec<i32> {
    let marker = format!("LEASE_STATE_DIR={}\0", sandbox.state_dir().display());
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        let ours = environ
            .windows(marker.len())
            .any(|w| w == marker.as_bytes());
        if ours && process_state(pid).is_some_and(|state| state != 'Z') {
            pids.push(pid);
        }
    }
    pids
}

/// The state letter of process `pid` in /proc (`R`, `S`, `Z`...), if it exists.
pub fn process_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let end = stat.rfind(')')?;
    stat[end + 2..].chars().next()
}

/// The parent pid of process `pid`, if it exists.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let end = stat.rfind(')')?;
    stat[end + 2..].split(' ').nth(1)?.parse().ok()
}

/// The name (`comm`) of process `pid`: its program after exec, if it exists.
pub fn program_of(pid: i32) -> Option<String> {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end().to_owned())
}

/// Marks the rest of a test as skipped for `why`, where the run shows it (on the real stderr,
/// which libtest does not capture). Under `CI=true` a skip fails the test, unless `.ci/run`
/// declares `key` in `LEASE_TEST_ALLOW_SKIP` (a comma-separated list): a security test that
/// cannot run there must be a decision, not an accident. The caller returns after this.
#[track_caller]
pub fn skip(key: &str, why: &str) {
    let declared = std::env::var("LEASE_TEST_ALLOW_SKIP")
        .unwrap_or_default()
        .split(',')
        .any(|k| k.trim() == key);
    let test = thread::current().name().unwrap_or("a test").to_owned();
    if std::env::var("CI").is_ok_and(|v| v == "true") && !declared {
        panic!(
            "{test} cannot run here ({why}); under CI=true that fails unless .ci/run declares {key} in LEASE_TEST_ALLOW_SKIP"
        );
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test} ({key}): {why}");
}

/// What the commands of one test printed, pinned whole against a file under tests/snapshots/
/// that is reviewed in the diff like code: each command as `$ lease ARGS`, its exit status, and
/// its stdout and stderr exactly, with only what changes from run to run redacted (the
/// sandbox's path as `[SANDBOX]`, lease ids as `[ID]`, times as `[TIME]`, pids as `[PID]`).
///
/// A mismatch fails the test, printing the diff. To accept new output, run the tests with
/// `SNAPSHOTS=overwrite` (snapbox rewrites the files) and review the diff of tests/snapshots/
/// before committing; under `CI=true` the files are never rewritten.
pub struct Transcript<'a> {
    sandbox: &'a Sandbox,
    text: String,
}

impl<'a> Transcript<'a> {
    pub fn new(sandbox: &'a Sandbox) -> Transcript<'a> {
        Transcript {
            sandbox,
            text: String::new(),
        }
    }

    /// Runs `cmd` (a `lease` command) and adds it, with what it printed, to the transcript. A
    /// token among its arguments is shown as `[TOKEN]`; in what it printed, it stays as it is,
    /// so that a leak fails the comparison.
    pub fn run(&mut self, cmd: Cmd) -> Out {
        let token = regex::Regex::new(r"^agt_[A-Za-z0-9_-]{48}$").expect("regex");
        let args: Vec<String> = cmd
            .command
            .get_args()
            .map(|a| match a.to_string_lossy() {
                word if token.is_match(&word) => "[TOKEN]".to_owned(),
                word => shell_word(&word),
            })
            .collect();
        let out = cmd.run();
        if !self.text.is_empty() {
            self.text.push('\n');
        }
        let line = std::iter::once("$ lease".to_owned()).chain(args);
        self.text
            .push_str(&(line.collect::<Vec<_>>().join(" ") + "\n"));
        match out.code() {
            Some(code) => self.text.push_str(&format!("exit {code}\n")),
            None => self
                .text
                .push_str(&format!("killed by {:?}\n", out.status.signal())),
        }
        for (name, stream) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            if stream.is_empty() {
                continue;
            }
            self.text.push_str(&format!("--- {name}\n{stream}"));
            if !stream.ends_with('\n') {
                self.text.push_str("\n\\ no newline at the end\n");
            }
        }
        out
    }

    /// Compares the transcript with tests/snapshots/`snapshot`.
    #[track_caller]
    pub fn matches(&self, snapshot: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(snapshot);
        let mut redactions = snapbox::Redactions::new();
        let redact = |redactions: &mut snapbox::Redactions, name, value: snapbox::RedactedValue| {
            redactions.insert(name, value).expect("a valid redaction");
        };
        redact(
            &mut redactions,
            "[SANDBOX]",
            self.sandbox
                .dir
                .path()
                .to_string_lossy()
                .into_owned()
                .into(),
        );
        redact(
            &mut redactions,
            "[ID]",
            regex::Regex::new(r"\b[0-9a-f]{12}\b")
                .expect("regex")
                .into(),
        );
        redact(
            &mut redactions,
            "[TIME]",
            regex::Regex::new(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z\b")
                .expect("regex")
                .into(),
        );
        redact(
            &mut redactions,
            "[PID]",
            regex::Regex::new(r"\bpid (?<redacted>\d+)\b")
                .expect("regex")
                .into(),
        );
        snapbox::Assert::new()
            .action(snapshot_action())
            .normalize_paths(false)
            .redact_with(redactions)
            .eq(
                self.text.as_str(),
                snapbox::Data::read_from(&path, Some(snapbox::data::DataFormat::Text)),
            );
    }
}

/// Verify, unless `SNAPSHOTS=overwrite` asks for the files to be rewritten outside CI. Only
/// these two: snapbox's `skip` and `ignore` would let a changed message pass unnoticed.
fn snapshot_action() -> snapbox::assert::Action {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let overwrite = std::env::var("SNAPSHOTS").is_ok_and(|v| v == "overwrite");
    if overwrite && !ci {
        snapbox::assert::Action::Overwrite
    } else {
        snapbox::assert::Action::Verify
    }
}

/// `word` as a shell would need it typed: quoted if it holds anything but plain characters.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_=:./,@%+".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Tests that load the machine on purpose (busy loops, hundreds of processes) and tests that
/// measure a deadline in milliseconds must not overlap: libtest runs tests in parallel on the
/// same two cores. A loading test holds [`loading`] (exclusive), a timing test [`timing`]
/// (shared with other timing tests), so a deadline is measured on a machine as busy as its
/// own test makes it, not as busy as an unrelated stress test does.
static LOAD: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by a test that loads the machine on purpose, for as long as it does.
pub fn loading() -> std::sync::RwLockWriteGuard<'static, ()> {
    LOAD.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Asserts that `expires` is `ttl` after a moment between `before` and `after`, rounded up to
/// the whole second as a lease's expiry is: the mint happened between them.
pub fn assert_expires_in(
    expires: std::time::SystemTime,
    ttl: Duration,
    (before, after): (std::time::SystemTime, std::time::SystemTime),
) {
    assert!(
        expires >= before + ttl && expires <= after + ttl + Duration::from_secs(1),
        "{expires:?} is not {ttl:?} after a moment between {before:?} and {after:?}"
    );
}

/// Held by a test whose assertion is a deadline of a second or less.
pub fn timing() -> std::sync::RwLockReadGuard<'static, ()> {
    LOAD.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A pseudo-terminal of 24 rows by 200 columns, for tests that need a real terminal.
pub fn open_pty() -> portable_pty::PtyPair {
    portable_pty::native_pty_system()
        .openpty(portable_pty::PtySize {
            rows: 24,
            cols: 200,
            pixel_width: 0,
            pixel_height: 0,
        })
        .expect("openpty")
}
