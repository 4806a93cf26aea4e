//! `lease serve`, the broker: the real binary on a unix socket and a loopback port, asked by
//! `lease verify --broker`, by curl, and by a real nginx (`auth_request`) and a real Caddy
//! (`forward_auth`) in front of a site, each started on free loopback ports and stopped after.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::harness::{Lines, Sandbox, death_signal, kill_pid, wait_for_exit};

/// A broker started by `lease serve` in a sandbox, on its own socket and a free port.
pub struct Broker {
    child: Child,
    log: Option<Lines>,
    pub socket: PathBuf,
    pub tcp: String,
}

impl Broker {
    /// Starts `lease serve` on `unix:SANDBOX/broker.sock` and `127.0.0.1:0`, and waits until
    /// it says it listens on both.
    pub fn start(sandbox: &Sandbox, extra: &[&str]) -> Broker {
        Broker::start_at(sandbox, sandbox.path("broker.sock"), extra)
    }

    /// The same, with the socket at `socket`.
    pub fn start_at(sandbox: &Sandbox, socket: PathBuf, extra: &[&str]) -> Broker {
        let mut command = sandbox
            .lease(["serve", "--listen"])
            .arg(format!("unix:{}", socket.display()))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .command;
        command.args(extra);
        if let Some(url) = sandbox.store_url()
            && !extra.contains(&"--store")
        {
            command.arg("--store").arg(url);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn lease serve");
        let mut log = Lines::from(child.stderr.take().expect("stderr"));
        log.expect("listening on unix:");
        let line = log.expect("listening on 127.0.0.1:");
        let tcp = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .expect("address")
            .to_owned();
        Broker {
            child,
            log: Some(log),
            socket,
            tcp,
        }
    }

    /// `unix:PATH`, for LEASE_BROKER.
    pub fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).expect("kill");
    }

    /// Waits for the next log line containing `needle`.
    pub fn expect_log(&mut self, needle: &str) -> String {
        self.log.as_mut().expect("log").expect(needle)
    }

    /// SIGTERM, then its exit status and every line it logged.
    pub fn stop(mut self) -> (ExitStatus, Vec<String>) {
        self.signal(Signal::SIGTERM);
        let status = wait_for_exit(&mut self.child);
        let lines = self.log.take().expect("log").rest();
        (status, lines)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            kill_pid(self.pid());
            let _ = self.child.wait();
        }
    }
}

/// A free loopback port, never one this test process was given before (bound and released:
/// another process could take it in between, which on a test machine's loopback is rare
/// enough).
pub fn free_port() -> u16 {
    // The kernel may hand the same port out again once its socket is closed: two calls in a
    // row (a web server's front and its upstream) once got the same one, and nginx then
    // served both server blocks on it, the first (the site, without auth_request) as the
    // default. A port is handed out once per test process.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// What curl got: the status and the headers (lower-cased names) and the body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the header `name`, in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Runs curl with `args` and the headers in `headers` (written to a private file, so that a
/// token never lands on curl's argv), and parses its `-i` output.
/// `/metrics` as Prometheus' own text-format parser (the `prometheus_client` package, Debian's
/// python3-prometheus-client) reads it: each family's type and samples, as JSON. A line the
/// parser refuses fails the test.
fn prometheus_families(text: &str) -> serde_json::Value {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = {f.name: {"type": f.type, "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
            for f in text_string_to_metric_families(sys.stdin.read())}
print(json.dumps(families))
"#;
    // Debian's python3, where the package is: another python3 may come first on PATH.
    let mut parser = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (with python3-prometheus-client)");
    parser
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing to the parser");
    let out = parser.wait_with_output().expect("the parser");
    assert!(
        out.status.success(),
        "Prometheus' parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the parser's JSON")
}

pub fn curl(sandbox: &Sandbox, headers: &[String], args: &[&str]) -> Reply {
    let file = sandbox.path(&format!("headers-{}", rand_suffix()));
    write_private(&file, &headers.join("\n"));
    let mut command = sandbox
        .command("curl")
        .arg("-s")
        .arg("-i")
        .arg("--max-time")
        .arg("10")
        .arg("-H")
        .arg(format!("@{}", file.display()))
        .command;
    command.args(args);
    let out = command.output().expect("curl");
    let _ = fs::remove_file(&file);
    assert!(out.status.success(), "curl failed: {out:?}");
    parse_reply(&String::from_utf8_lossy(&out.stdout))
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn write_private(path: &Path, text: &str) {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .expect("header file");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
    file.write_all(text.as_bytes()).expect("write");
}

fn parse_reply(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

pub fn bearer(token: &str) -> Vec<String> {
    vec![format!("Authorization: Bearer {token}")]
}

/// `POST /v1/verify` for `action` on the broker's unix socket.
fn verify_over_http(sandbox: &Sandbox, broker: &Broker, token: Option<&str>, body: &str) -> Reply {
    verify_on(sandbox, &broker.socket, token, body)
}

/// `POST` of `body` to `path` on the broker's unix socket, with `headers`.
fn post_on_socket(
    sandbox: &Sandbox,
    broker: &Broker,
    headers: &[String],
    body: &str,
    path: &str,
) -> Reply {
    let socket = broker.socket.display().to_string();
    let url = format!("http://lease{path}");
    curl(
        sandbox,
        headers,
        &["--unix-socket", &socket, "--data", body, &url],
    )
}

/// `POST /v1/verify` for `action` on the broker's unix socket at `socket`; whatever it
/// answers, the token is in none of it.
fn verify_on(sandbox: &Sandbox, socket: &Path, token: Option<&str>, body: &str) -> Reply {
    let headers = token.map(bearer).unwrap_or_default();
    let socket = socket.display().to_string();
    let reply = curl(
        sandbox,
        &headers,
        &[
            "--unix-socket",
            &socket,
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
            "http://lease/v1/verify",
        ],
    );
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        assert!(!format!("{reply:?}").contains(token), "{reply:?}");
    }
    reply
}

#[test]
fn verify_through_the_broker_answers_exactly_as_the_local_store_does() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let token = sandbox.issue("read:articles,write:draft");
    let issued = sandbox.issue_json("read:articles", &[]);
    let revoked = issued["token"].as_str().expect("token").to_owned();
    let revoked_id = issued["id"].as_str().expect("id").to_owned();
    sandbox.lease(["revoke", &revoked_id]).run().success();
    let unknown = {
        let other = Sandbox::new();
        other.issue("read:articles")
    };
    let cases: Vec<(Option<&str>, &str)> = vec![
        (Some(&token), "read:articles"),
        (Some(&token), "write:other"),
        (Some(&revoked), "read:articles"),
        (Some(&unknown), "read:articles"),
        (Some("agt_not-a-token"), "read:articles"),
        (None, "read:articles"),
    ];
    for (token, action) in cases {
        for json in [false, true] {
            let run = |broker_endpoint: Option<&str>| {
                let mut cmd = sandbox.lease(["verify", action]);
                if json {
                    cmd = cmd.arg("--json");
                }
                cmd = match token {
                    Some(token) => cmd.env("LEASE_TOKEN", token),
                    None => cmd.env_remove("LEASE_TOKEN"),
                };
                if let Some(endpoint) = broker_endpoint {
                    // The broker alone reads the store: the client's state dir is a decoy.
                    cmd = cmd
                        .env("LEASE_BROKER", endpoint)
                        .env("LEASE_STATE_DIR", sandbox.path("elsewhere"));
                }
                cmd.run()
            };
            let local = run(None);
            let remote = run(Some(&broker.endpoint()));
            assert_eq!(
                (local.code(), &local.stdout, &local.stderr),
                (remote.code(), &remote.stdout, &remote.stderr),
                "{token:?} {action} json={json}"
            );
        }
    }
    assert!(
        !sandbox.path("elsewhere").exists(),
        "the client opened a store"
    );
    let (status, log) = broker.stop();
    assert_eq!(status.code(), Some(0), "{log:?}");
    let log = log.join("\n");
    assert!(!log.contains(&token) && !log.contains(&revoked), "{log}");
    assert!(log.contains("granted read:articles: granted"), "{log}");
    assert!(log.contains("denied write:other: out of scope"), "{log}");
}

/// The threads of process `pid`.
fn threads_of(pid: i32) -> usize {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a thread count")
}

#[test]
fn a_decision_waiting_for_a_records_lock_holds_up_no_other_decision() {
    if crate::harness::files_only("holds a record file's lock (flock) to stall a charge") {
        return;
    }
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let budgeted = sandbox.issue_json("read:articles", &["--uses", "100"]);
    let budgeted_token = budgeted["token"].as_str().expect("token");
    let free = sandbox.issue("read:articles");
    let body = r#"{"action":"read:articles"}"#;
    // A slow writer holds the budgeted lease's record: each charge of a use waits for it (the
    // store waits 2 s at most, then answers 503).
    let record = fs::File::open(sandbox.record_path(&budgeted["id"])).expect("record");
    record.lock().expect("record locked");
    let before = threads_of(broker.pid());
    let socket = &broker.socket;
    std::thread::scope(|scope| {
        let waiting: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| verify_on(&sandbox, socket, Some(budgeted_token), body)))
            .collect();
        // Each waiting charge has a thread of its own; on the runtime's threads, they would
        // stop every other request until the lock came free.
        let deadline = Instant::now() + crate::harness::PATIENCE;
        while threads_of(broker.pid()) < before + 4 {
            assert!(
                Instant::now() < deadline,
                "the charges never reached the broker"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        let reply = verify_over_http(&sandbox, &broker, Some(&free), body);
        let took = started.elapsed();
        assert_eq!(reply.status, 200, "{reply:?}");
        // Held up, it would wait for the lock's 2 s.
        assert!(
            took < Duration::from_millis(1500),
            "the free lease waited {took:?}"
        );
        record.unlock().expect("unlocked");
        for thread in waiting {
            let reply = thread.join().expect("a waiting verify");
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    });
}

/// The threads of process `pid` that its runtime named `lease-serve` (workers, and the blocking
/// pool's threads while they live).
fn serving_threads(pid: i32) -> usize {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("tasks");
    tasks
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "lease-serve")
        .count()
}

/// One thread answers requests by default (the process's own); `workers = N` gives N threads of
/// the runtime's, and decisions are made on them as on the one.
#[test]
fn workers_sets_how_many_threads_answer_requests() {
    let sandbox = Sandbox::new();
    let token = sandbox.issue("read:articles");
    let body = r#"{"action":"read:articles"}"#;
    for (workers, threads) in [(None, 0), (Some(3), 3)] {
        if let Some(workers) = workers {
            sandbox.write_config(&format!("workers = {workers}\n"));
        }
        let broker = Broker::start(&sandbox, &[]);
        assert_eq!(
            verify_over_http(&sandbox, &broker, Some(&token), body).status,
            200
        );
        assert_eq!(
            verify_on(&sandbox, &broker.socket, Some(&token), body).status,
            200
        );
        // The blocking pool's threads are named as the workers are: none has been started by
        // these reads on the local store (on etcd, each read is made on one).
        if sandbox.store_url().is_none() {
            assert_eq!(
                serving_threads(broker.pid()),
                threads,
                "workers = {workers:?}"
            );
        }
    }
}

/// `/metrics` reads every record to count the active leases, on a thread that may block:
/// scrapes take turns at it, so a flood of them (no token needed) holds one such thread, and
/// mints, charges and runs' ends still find theirs; scrapes whose clients leave before the
/// answer too (their counts still run: the next does not start beside them).
#[test]
fn a_flood_of_metrics_scrapes_holds_one_thread_that_may_block() {
    let sandbox = Sandbox::new();
    if sandbox.store_url().is_some() {
        // On etcd, decisions are made on those threads too: the count would not be the scans'.
        return;
    }
    for _ in 0..200 {
        sandbox.issue("read:articles");
    }
    let broker = Broker::start(&sandbox, &[]);
    // Scrapes whose clients leave a millisecond after they send (the pause is the client's
    // behaviour under test, not a wait for the broker), one after the other: each is read and
    // its count begun, or its turn awaited, before its client leaves; counts that went on
    // past their clients took all 8 threads.
    for _ in 0..24 {
        let mut stream = std::net::TcpStream::connect(&broker.tcp).expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: lease\r\n\r\n")
            .expect("send");
        std::thread::sleep(Duration::from_millis(1));
    }
    let url = format!("http://{}/metrics", broker.tcp);
    let mut args = vec![
        "-s",
        "--parallel",
        "--parallel-immediate",
        "--parallel-max",
        "24",
    ];
    args.extend(["-w", "%{http_code}\n"]);
    for _ in 0..24 {
        args.extend(["-o", "/dev/null", url.as_str()]);
    }
    let out = sandbox.command("curl").args(&args).run().success();
    assert_eq!(
        out.stdout.lines().filter(|l| *l == "200").count(),
        24,
        "{out:?}"
    );
    // The pool's threads stay 10 s after their work: as many as ever worked at once, and a few
    // more (a scan's thread that has answered but is not yet back in the pool when the next
    // scan is handed out gets a new one beside it: 1 to 3 in runs here). Scans all at once
    // take 8 of the pool's threads (`BLOCKING_THREADS`) and more.
    let threads = serving_threads(broker.pid());
    assert!((1..8).contains(&threads), "{threads} threads scanned");
}

/// A decision whose chain is more than a few leases deep is made on a thread that may block,
/// not on the runtime's (a chain thousands deep would hold every other request that long), and
/// decides as any other.
#[test]
fn a_deep_chains_decision_is_made_off_the_runtimes_thread() {
    let sandbox = Sandbox::new();
    if sandbox.store_url().is_some() {
        // On etcd, every decision is made off the runtime's thread.
        return;
    }
    let broker = Broker::start(&sandbox, &[]);
    let mut token = sandbox.issue("read:articles");
    let read = r#"{"action":"read:articles"}"#;
    let write = r#"{"action":"write:articles"}"#;
    assert_eq!(
        verify_on(&sandbox, &broker.socket, Some(&token), read).status,
        200
    );
    assert_eq!(
        serving_threads(broker.pid()),
        0,
        "a root lease's, on the runtime's"
    );
    for depth in 1..=9 {
        token = sandbox
            .lease(["issue", "--scope", "read:articles"])
            .env("LEASE_TOKEN", &token)
            .run()
            .success()
            .stdout
            .trim()
            .to_owned();
        assert_eq!(
            verify_on(&sandbox, &broker.socket, Some(&token), read).status,
            200
        );
        assert_eq!(
            serving_threads(broker.pid()) > 0,
            depth > 8,
            "a lease with {depth} above it"
        );
    }
    let reply = verify_on(&sandbox, &broker.socket, Some(&token), write);
    assert_eq!(reply.status, 403, "{reply:?}");
    let body: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    assert_eq!(body["reason"], "out of scope", "{reply:?}");
}

/// The broker's open descriptors that `keep` holds, by the names they link to.
fn descriptors(pid: i32, keep: impl Fn(&str) -> bool) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| fs::read_link(entry.path()).ok())
                .map(|target| target.display().to_string())
                .filter(|target| keep(target))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits, at most PATIENCE, until `done` holds.
fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + crate::harness::PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A client that leaves while its decision is being made (here, a use to charge waits for its
/// record's lock) takes neither the decision nor its trail event with it: the use charged is
/// in the trail, for `/v1/verify`, `/v1/auth` and a proxied request alike (the events were lost
/// with the requests before, the uses spent all the same).
#[test]
fn a_client_that_leaves_before_its_decision_still_has_its_use_in_the_trail() {
    use std::io::Write as _;
    if crate::harness::files_only("holds a record file's lock (flock) to stall a charge") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write_config(
        "[upstream.api]\nurl = \"http://127.0.0.1:9\"\nsecret_command = [\"echo\", \"k3y\"]\n\n[[upstream.api.route]]\npath = \"/**\"\naction = \"read:articles\"\n",
    );
    let broker = Broker::start(&sandbox, &[]);
    let lease = sandbox.issue_json("read:articles", &["--uses", "5"]);
    let id = lease["id"].as_str().expect("id").to_owned();
    let token = lease["token"].as_str().expect("token").to_owned();
    let path = sandbox.record_path(&lease["id"]);
    let shown = path.display().to_string();
    let sockets = || descriptors(broker.pid(), |t| t.starts_with("socket:")).len();
    let body = r#"{"action":"read:articles"}"#;
    let requests = [
        (
            format!(
                "POST /v1/verify HTTP/1.1\r\nHost: lease\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            "\"event\":\"granted\"",
        ),
        (
            format!(
                "GET /v1/auth HTTP/1.1\r\nHost: lease\r\nAuthorization: Bearer {token}\r\nX-Lease-Action: read:articles\r\n\r\n"
            ),
            "\"event\":\"granted\"",
        ),
        (
            format!(
                "GET /u/api/articles HTTP/1.1\r\nHost: lease\r\nAuthorization: Bearer {token}\r\n\r\n"
            ),
            "\"event\":\"proxied\"",
        ),
    ];
    let trail = sandbox.state_dir().join("audit.jsonl");
    let count = |kind: &str| {
        fs::read_to_string(&trail)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(kind) && l.contains(&id))
            .count()
    };
    for (left, (request, kind)) in (2..5).rev().zip(&requests) {
        let before = count(kind);
        let record = fs::File::open(&path).expect("record");
        record.lock().expect("record locked");
        let idle = sockets();
        let mut client = std::os::unix::net::UnixStream::connect(&broker.socket).expect("connect");
        client.write_all(request.as_bytes()).expect("request");
        // The decision is under way once the broker holds the record open for its lock.
        until("the broker opens the record", || {
            !descriptors(broker.pid(), |t| t == shown).is_empty()
        });
        // The client leaves; the broker lets its connection go.
        drop(client);
        until("the broker closes the connection", || sockets() == idle);
        record.unlock().expect("unlocked");
        until(&format!("{kind} is in the trail"), || {
            count(kind) == before + 1
        });
        let listed = sandbox.lease(["list", "--json"]).run().success().json();
        let entry = listed
            .as_array()
            .expect("list")
            .iter()
            .find(|l| l["id"] == id.as_str())
            .expect("listed")
            .clone();
        assert_eq!(entry["uses_left"], left, "{request}: {listed:#?}");
    }
    // The proxied request's event: decided, granted, the upstream never reached.
    let text = fs::read_to_string(&trail).expect("trail");
    let proxied = text
        .lines()
        .find(|l| l.contains("\"event\":\"proxied\""))
        .expect("proxied");
    let proxied: serde_json::Value = serde_json::from_str(proxied).expect("json");
    assert_eq!(proxied["reason"], "granted", "{proxied}");
    assert_eq!(proxied["upstream"], "api", "{proxied}");
    assert!(proxied["status"].is_null(), "{proxied}");
}

#[test]
fn the_http_api_answers_each_decision_with_its_status_code() {
    if crate::harness::local_only(
        "it counts the trail's decisions, and the sandbox's broker adds its own clients",
    ) {
        return;
    }
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let token = sandbox.issue("read:articles");
    let body = |action: &str| format!("{{\"action\":\"{action}\"}}");

    let granted = verify_over_http(&sandbox, &broker, Some(&token), &body("read:articles"));
    assert_eq!(granted.status, 200, "{granted:?}");
    let json: serde_json::Value = serde_json::from_str(&granted.body).expect("json");
    assert_eq!(json["granted"], true);
    assert_eq!(json["reason"], "granted");
    assert!(json["id"].is_string() && json["expires_at"].is_string());

    let denied = verify_over_http(&sandbox, &broker, Some(&token), &body("write:x"));
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(denied.body.contains("\"reason\":\"out of scope\""));

    let unknown = Sandbox::new().issue("a:b");
    for (token, reason) in [
        (None, "no token"),
        (Some("agt_short"), "malformed"),
        (Some(unknown.as_str()), "unknown"),
    ] {
        let reply = verify_over_http(&sandbox, &broker, token, &body("read:articles"));
        assert_eq!(reply.status, 401, "{reply:?}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"lease\"")
        );
        assert!(
            reply.body.contains(&format!("\"reason\":\"{reason}\"")),
            "{reply:?}"
        );
    }

    // Authorization sent twice is no token: the same answer, in the same shape.
    let mut twice = bearer(&token);
    twice.extend(bearer(&token));
    let reply = post_on_socket(
        &sandbox,
        &broker,
        &twice,
        &body("read:articles"),
        "/v1/verify",
    );
    assert_eq!(reply.status, 401, "{reply:?}");
    let json: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    assert_eq!(
        (&json["granted"], &json["reason"]),
        (&serde_json::json!(false), &serde_json::json!("no token")),
        "{reply:?}"
    );

    let bad = verify_over_http(&sandbox, &broker, Some(&token), "{\"action\": 5}");
    assert_eq!(bad.status, 400, "{bad:?}");
    let bad = verify_over_http(&sandbox, &broker, Some(&token), &body("no spaces allowed"));
    assert_eq!(bad.status, 400, "{bad:?}");
    // The fields of the object in order, as an array, is not the object.
    let bad = verify_over_http(&sandbox, &broker, Some(&token), "[\"read:articles\"]");
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(bad.body.contains("expected a JSON object"), "{bad:?}");

    let url = format!("http://{}", broker.tcp);
    let health = curl(&sandbox, &[], &[&format!("{url}/healthz")]);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let wrong_method = curl(&sandbox, &[], &[&format!("{url}/v1/verify")]);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    let wrong_method = curl(&sandbox, &[], &["-X", "POST", &format!("{url}/healthz")]);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET, HEAD"));
    assert_eq!(curl(&sandbox, &[], &[&format!("{url}/nope")]).status, 404);

    let head = curl(&sandbox, &[], &["-I", &format!("{url}/metrics")]);
    assert_eq!(head.status, 200, "{head:?}");
    let wrong_method = curl(&sandbox, &[], &["-X", "POST", &format!("{url}/metrics")]);
    assert_eq!(wrong_method.header("allow"), Some("GET, HEAD"));
    let metrics = curl(&sandbox, &[], &[&format!("{url}/metrics")]);
    assert_eq!(metrics.status, 200);
    for line in [
        "lease_decisions_total{result=\"granted\",reason=\"granted\"} 1",
        "lease_decisions_total{result=\"denied\",reason=\"out of scope\"} 1",
        "lease_decisions_total{result=\"denied\",reason=\"malformed\"} 1",
        "lease_decisions_total{result=\"denied\",reason=\"unknown\"} 1",
        "lease_active_leases 1",
        "lease_request_duration_seconds_count ",
    ] {
        assert!(metrics.body.contains(line), "{line} in {}", metrics.body);
    }
    assert_eq!(
        metrics.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // Read back by Prometheus' own parser for its text format, as a scraper would.
    let families = prometheus_families(&metrics.body);
    assert_eq!(families["lease_decisions"]["type"], "counter", "{families}");
    assert_eq!(families["lease_active_leases"]["type"], "gauge");
    assert_eq!(families["lease_active_leases"]["samples"][0]["value"], 1.0);
    let latency = &families["lease_request_duration_seconds"];
    assert_eq!(latency["type"], "histogram", "{families}");
    let samples = latency["samples"].as_array().expect("samples");
    let buckets: Vec<f64> = samples
        .iter()
        .filter(|s| s["name"] == "lease_request_duration_seconds_bucket")
        .map(|s| s["value"].as_f64().expect("a count"))
        .collect();
    assert!(buckets.len() > 1, "{families}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{families}");
    let count = samples
        .iter()
        .find(|s| s["name"] == "lease_request_duration_seconds_count")
        .expect("a count");
    assert_eq!(
        Some(count["value"].as_f64()),
        buckets.last().map(|b| Some(*b))
    );
    let granted = families["lease_decisions"]["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| s["labels"]["reason"] == "granted")
        .map(|s| {
            (
                s["name"].clone(),
                s["labels"]["result"].clone(),
                s["value"].clone(),
            )
        })
        .collect::<Vec<_>>();
    assert_eq!(
        granted,
        [("lease_decisions_total".into(), "granted".into(), 1.0.into())]
    );
    // Decisions about a lease went to the trail, with the client.
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).expect("trail");
    assert!(!trail.contains(&token));
    let decisions: Vec<serde_json::Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .filter(|e: &serde_json::Value| {
            e["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("unix:uid="))
        })
        .collect();
    // The two decisions about a lease; the three about none (no token, malformed, unknown),
    // which anyone can send by the thousand, are counted and logged but kept out of the trail.
    assert_eq!(decisions.len(), 2, "{trail}");
    assert!(decisions.iter().all(|e| e["lease"].is_string()), "{trail}");
    let (status, log) = broker.stop();
    assert_eq!(status.code(), Some(0));
    assert!(!log.join("\n").contains(&token));
}

/// A token holder minting under its own lease once that lease is revoked is refused as a
/// local `lease issue` is (`403`, the same sentence); a token the broker does not know, or two
/// tokens, are `401`.
#[test]
fn a_nested_mint_under_a_dead_lease_is_refused_in_the_local_words() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let parent = sandbox.issue_json("read:a", &[]);
    let token = parent["token"].as_str().expect("token");
    let id = parent["id"].as_str().expect("id");
    sandbox
        .lease(["revoke", id])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success();
    let url = format!("http://{}/v1/leases", broker.tcp);
    let body = r#"{"scope":["read:a"]}"#;
    let dead = curl(&sandbox, &bearer(token), &["--data", body, &url]);
    assert_eq!(dead.status, 403, "{dead:?}");
    let why: serde_json::Value = serde_json::from_str(&dead.body).expect("json");
    let why = why["error"].as_str().expect("error");
    assert!(
        why.starts_with(&format!(
            "the parent lease in the environment is revoked: lease {id} was revoked at "
        )) && why.ends_with("; a child of it could never be used"),
        "{why}"
    );
    // A well-formed token of another store: no lease here, so no right (an operator's would
    // be no parent).
    let unknown = Sandbox::new().issue("read:a");
    let reply = curl(&sandbox, &bearer(&unknown), &["--data", body, &url]);
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.body.contains("unknown: "), "{reply:?}");
    // Two credentials are none, even from an operator, whose token-less mint would be a root.
    let mut twice = bearer(&unknown);
    twice.extend(bearer(token));
    let reply = post_on_socket(&sandbox, &broker, &twice, body, "/v1/leases");
    assert_eq!(reply.status, 401, "{reply:?}");
    // The command line over TCP says what it says locally.
    let out = sandbox
        .lease(["issue", "--scope", "read:a"])
        .env("LEASE_BROKER", format!("http://{}", broker.tcp))
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(2)
        .one_error_line();
    assert_eq!(out.stderr.trim_end(), format!("lease: {why}"));
}

/// A revoke by id or of all leases through the broker is in the trail under its caller (the
/// client on the socket), as a local revoke is under its own.
#[test]
fn a_revoke_through_the_broker_is_in_the_trail_under_its_caller() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let one = sandbox.issue_json("read:a", &[]);
    sandbox.issue("read:b");
    let id = one["id"].as_str().expect("id");
    for args in [vec!["revoke", id], vec!["revoke", "--all"]] {
        sandbox
            .lease(args)
            .env("LEASE_BROKER", broker.endpoint())
            .run()
            .success();
    }
    let revoked: Vec<serde_json::Value> = sandbox
        .trail()
        .into_iter()
        .filter(|e| e["event"] == "revoked")
        .collect();
    assert_eq!(revoked.len(), 2, "{revoked:?}");
    for event in &revoked {
        assert!(
            event["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("unix:uid=")),
            "{event}"
        );
        assert_eq!(event["pid"], std::process::id(), "{event}");
    }
}

/// A token holder is told that no lease in the broker's store matches its token, not where
/// that store is; an operator (on the socket) gets the path, as locally.
#[test]
fn a_token_holder_is_not_told_where_the_brokers_store_is() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let stranger = Sandbox::new().issue("read:a");
    let state = sandbox.state_dir().display().to_string();
    let reply = curl(
        &sandbox,
        &bearer(&stranger),
        &[
            "--data",
            r#"{"command":"revoke_self"}"#,
            &format!("http://{}/v1/commands", broker.tcp),
        ],
    );
    assert!(
        reply
            .body
            .contains("no lease in the broker's store matches the token"),
        "{reply:?}"
    );
    assert!(!reply.body.contains(&state), "{reply:?}");
    if let Some(url) = sandbox.store_url() {
        assert!(!reply.body.contains(url), "{reply:?}");
    }
    let out = sandbox
        .lease(["revoke", "--self"])
        .env("LEASE_BROKER", broker.endpoint())
        .env("LEASE_TOKEN", &stranger)
        .run()
        .code_is(2);
    // An operator is told where: the state dir, or the etcd store's address.
    let store = sandbox.store_url().map_or(state, str::to_owned);
    assert!(
        out.stderr.contains(&format!("no lease in {store} matches")),
        "{out:?}"
    );
}

/// A store the broker cannot read is the broker's trouble, not the command's: `503` for every
/// command, and its place is told to no token holder (only the broker's log has it). A token
/// whose own record is corrupt is `503` too, not an unknown token.
#[test]
fn a_store_the_broker_cannot_read_is_503_and_its_place_is_told_to_no_token_holder() {
    if crate::harness::files_only("it breaks the state dir's lease directory") {
        return;
    }
    let sandbox = Sandbox::new();
    let mut broker = Broker::start(&sandbox, &[]);
    let issued = sandbox.issue_json("read:a", &[]);
    let (id, token) = (
        issued["id"].as_str().expect("id"),
        issued["token"].as_str().expect("token"),
    );
    let place = sandbox.state_dir().display().to_string();
    let url = format!("http://{}/v1/commands", broker.tcp);
    let ask = |command: &str| {
        let reply = curl(&sandbox, &bearer(token), &["--data", command, &url]);
        assert_eq!(reply.status, 503, "{command}: {reply:?}");
        assert!(!reply.body.contains(&place), "{command}: {reply:?}");
        reply
    };
    // Its own record corrupt: whose lease an id is cannot be told.
    fs::write(sandbox.record_path(&issued["id"]), "junk = [").expect("corrupt the record");
    for command in [
        r#"{"command":"log","id":null,"since":null,"json":true}"#.to_owned(),
        format!(r#"{{"command":"suggest","id":"{id}","json":true}}"#),
        format!(r#"{{"command":"revoke","ids":["{id}"]}}"#),
    ] {
        ask(&command);
    }
    // The lease directory gone, a file in its place: every command.
    let leases = sandbox.state_dir().join("leases");
    fs::rename(&leases, sandbox.state_dir().join("leases.moved")).expect("move the leases");
    fs::write(&leases, "x").expect("a file in their place");
    for command in [
        r#"{"command":"status","json":false}"#,
        r#"{"command":"renew","ttl":60}"#,
        r#"{"command":"revoke_self"}"#,
        r#"{"command":"log","id":null,"since":null,"json":false}"#,
    ] {
        let reply = ask(command);
        assert!(
            reply.body.contains("the broker cannot read its store"),
            "{command}: {reply:?}"
        );
    }
    // The client (a token holder, over TCP) says so in one line, exit 2, and the broker's log
    // says why.
    let out = sandbox
        .lease(["status"])
        .env("LEASE_BROKER", format!("http://{}", broker.tcp))
        .env("LEASE_TOKEN", token)
        .run()
        .code_is(2)
        .one_error_line()
        .stderr_has("the broker cannot read its store");
    assert!(!out.stderr.contains(&place), "{out:?}");
    broker.expect_log("is not a directory");
}

/// `status`, `renew` and `revoke --self` over HTTP about a token that is no credential
/// (malformed, unknown, revoked) answer `401` with the challenge, as every endpoint does, and
/// still carry what the command printed, which the client prints as a local run would; a
/// live token's answer is a `200`.
#[test]
fn the_commands_about_a_token_that_is_no_credential_answer_401() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let live = sandbox.issue("read:a");
    let revoked = sandbox.issue("read:b");
    sandbox
        .lease(["revoke", "--self"])
        .env("LEASE_TOKEN", &revoked)
        .run()
        .success();
    let stranger = Sandbox::new().issue("read:c");
    let malformed = format!("agt_{}", "A".repeat(48));
    let url = format!("http://{}/v1/commands", broker.tcp);
    for (command, tokens) in [
        (
            r#"{"command":"status","json":false}"#,
            &[&malformed, &stranger, &revoked][..],
        ),
        (
            r#"{"command":"renew","ttl":60}"#,
            &[&malformed, &stranger, &revoked],
        ),
        // Revoking a lease revoked already succeeds (200): only a token naming none is refused.
        (r#"{"command":"revoke_self"}"#, &[&malformed, &stranger]),
    ] {
        for token in tokens {
            let said = if *token == &malformed {
                "malformed"
            } else if *token == &stranger {
                "unknown"
            } else {
                "revoked"
            };
            let reply = curl(&sandbox, &bearer(token), &["--data", command, &url]);
            assert_eq!(reply.status, 401, "{command} {said}: {reply:?}");
            assert_eq!(
                reply.header("www-authenticate"),
                Some("Bearer realm=\"lease\""),
                "{command} {said}"
            );
            let printed: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
            assert_ne!(printed["exit"], 0, "{command} {said}: {reply:?}");
            let stderr = printed["stderr"].as_str().expect("stderr");
            assert!(
                stderr.starts_with("lease: ") && stderr.lines().count() == 1,
                "{command} {said}: {reply:?}"
            );
            // And the error, as every refusal has it.
            assert_eq!(
                printed["error"].as_str(),
                stderr.trim_end().strip_prefix("lease: "),
                "{command} {said}"
            );
        }
    }
    for (token, command) in [
        (&live, r#"{"command":"status","json":true}"#),
        (&revoked, r#"{"command":"revoke_self"}"#),
    ] {
        let reply = curl(&sandbox, &bearer(token), &["--data", command, &url]);
        assert_eq!(reply.status, 200, "{command}: {reply:?}");
    }
    // The client prints what a local run prints, whichever status carried it (the time left,
    // `in 10m`, is the moment's: the two runs may read the clock a second apart).
    let countdown = regex::Regex::new(r"\(in [^)]*\)").expect("a pattern");
    let same = |text: &str| countdown.replace_all(text, "(in ...)").into_owned();
    for token in [&revoked, &live] {
        let local = sandbox.lease(["status"]).env("LEASE_TOKEN", token).run();
        let through = sandbox
            .lease(["status"])
            .env("LEASE_TOKEN", token)
            .env("LEASE_BROKER", broker.endpoint())
            .run();
        assert_eq!(through.code(), local.code(), "{through:?}");
        assert_eq!(same(&through.stdout), same(&local.stdout));
        assert_eq!(same(&through.stderr), same(&local.stderr));
    }
}

/// A token holder is told of "the broker's config", not of its path; and a root lease
/// (`no_parent`) is an operator's, whatever `allow_orphans` says.
#[test]
fn a_token_holder_is_not_told_where_the_brokers_config_is() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config("allow_orphans = true\n");
    let broker = Broker::start(&sandbox, &[]);
    let token = sandbox.issue("read:a");
    let mint = |body: &str| {
        curl(
            &sandbox,
            &bearer(&token),
            &["--data", body, &format!("http://{}/v1/leases", broker.tcp)],
        )
    };
    let orphan = mint(r#"{"scope":["read:a"],"no_parent":true}"#);
    assert_eq!(orphan.status, 403, "{orphan:?}");
    assert!(
        orphan
            .body
            .contains("not allowed: minting a root lease needs an operator"),
        "{orphan:?}"
    );
    let profile = mint(r#"{"scope":["read:a"],"profile":"p"}"#);
    assert!(
        profile
            .body
            .contains("no profiles are defined in the broker's config"),
        "{profile:?}"
    );
    let config = config.display().to_string();
    for reply in [&orphan, &profile] {
        assert!(!reply.body.contains(&config), "{reply:?}");
    }
}

/// A value in `LEASE_TOKEN` or `--token-env` that is not a lease token (another service's key
/// left there) never leaves the client: the broker gets the bare prefix, and answers as it
/// answers any malformed token, in the local words.
#[test]
fn a_value_that_is_not_a_lease_token_is_never_sent_to_the_broker() {
    use std::io::{BufRead, BufReader};
    let sandbox = Sandbox::new();
    let key = "ghp_NOTALEASETOKEN0123456789abcdef";
    // What the client sends is seen on the wire: a listener here reads one request head (no
    // server logs its requests' Authorization as sent), then closes without a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let capture = format!("http://{}", listener.local_addr().expect("address"));
    let (sender, heads) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(2) {
            let stream = stream.expect("accepted");
            stream
                .set_read_timeout(Some(crate::harness::PATIENCE))
                .expect("timeout");
            let mut head = String::new();
            let mut reader = BufReader::new(stream);
            while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
            let _ = sender.send(head);
        }
    });
    for args in [&["status"][..], &["status", "--token-env", "GH_TOKEN"]] {
        sandbox
            .lease(args)
            .env("LEASE_TOKEN", key)
            .env("GH_TOKEN", key)
            .env("LEASE_BROKER", &capture)
            .run()
            .code_is(2);
    }
    for _ in 0..2 {
        let head = heads
            .recv_timeout(crate::harness::PATIENCE)
            .expect("the client's request");
        assert!(!head.contains("NOTALEASETOKEN"), "{head}");
        assert!(head.contains("Authorization: Bearer agt_\r\n"), "{head}");
    }
    // A real broker answers as the local store does.
    let broker = Broker::start(&sandbox, &[]);
    let local = sandbox.lease(["status"]).env("LEASE_TOKEN", key).run();
    let through = sandbox
        .lease(["status"])
        .env("LEASE_TOKEN", key)
        .env("LEASE_BROKER", broker.endpoint())
        .run();
    assert_eq!(
        (through.code(), &through.stderr, &through.stdout),
        (local.code(), &local.stderr, &local.stdout)
    );
}

/// Forward-auth answers a grant with the lease's id and scopes, for the web server to pass on.
#[test]
fn forward_auth_names_the_granted_lease_and_its_scopes() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let issued = sandbox.issue_json("read:articles,write:draft=2", &[]);
    let token = issued["token"].as_str().expect("token");
    let socket = broker.socket.display().to_string();
    let mut headers = bearer(token);
    headers.push("X-Lease-Action: write:draft".to_owned());
    let reply = curl(
        &sandbox,
        &headers,
        &["--unix-socket", &socket, "http://lease/v1/auth"],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-lease-id"), issued["id"].as_str());
    assert_eq!(
        reply.header("x-lease-scope"),
        Some("read:articles,write:draft")
    );
    // A denial names nothing: out of scope, then the budget of 2 spent by a second grant.
    let ask = |action: &str| {
        let mut headers = bearer(token);
        headers.push(format!("X-Lease-Action: {action}"));
        curl(
            &sandbox,
            &headers,
            &["--unix-socket", &socket, "http://lease/v1/auth"],
        )
    };
    assert_eq!(ask("write:draft").status, 200);
    for action in ["delete:all", "write:draft"] {
        let denied = ask(action);
        assert_eq!(denied.status, 403, "{action}: {denied:?}");
        assert_eq!(denied.header("x-lease-id"), None, "{action}");
        assert_eq!(denied.header("x-lease-scope"), None, "{action}");
    }
}

#[test]
fn an_unreachable_or_garbled_broker_fails_closed() {
    let sandbox = Sandbox::new();
    let token = sandbox.issue("read:articles");
    let missing = format!("unix:{}", sandbox.path("none.sock").display());
    let out = sandbox
        .lease(["verify", "read:articles"])
        .env("LEASE_TOKEN", &token)
        .env("LEASE_BROKER", &missing)
        .run()
        .code_is(2)
        .one_error_line()
        .lacks_token(&token);
    assert!(
        out.stderr
            .starts_with(&format!("lease: cannot verify: broker {missing}: ")),
        "{out:?}"
    );
    assert!(
        out.stderr.trim_end().ends_with(
            "connecting: No such file or directory (os error 2): is `lease serve` running, and listening on this socket?"
        ),
        "{out:?}"
    );

    // A server that answers garbage: no real server does that on purpose, so a thread here
    // plays it, once per connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten().take(2) {
            let mut stream = stream;
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
        }
    });
    let garbled = format!("http://{address}");
    let out = sandbox
        .lease(["verify", "read:articles", "--json"])
        .env("LEASE_TOKEN", &token)
        .env("LEASE_BROKER", &garbled)
        .run()
        .code_is(2)
        .lacks_token(&token);
    assert!(
        out.stderr.contains(&format!("broker {garbled}: ")),
        "{out:?}"
    );
    assert!(out.stdout.contains("\"granted\":false"), "{out:?}");

    // A broker that accepts and never answers: each call gives up at its bound, and says so.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung = format!("http://{}", silent.local_addr().expect("address"));
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(2).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(held);
    });
    for (args, code, said) in [
        (
            &["verify", "read:articles"][..],
            2,
            format!("lease: cannot verify: broker {hung}: no answer within 5s"),
        ),
        (
            &["run", "--scope", "a", "--", "true"],
            125,
            format!("lease: cannot start the run: broker {hung}: no answer within 5s"),
        ),
    ] {
        let started = Instant::now();
        let out = sandbox
            .lease(args)
            .env("LEASE_TOKEN", &token)
            .env("LEASE_BROKER", &hung)
            .run()
            .code_is(code)
            .one_error_line();
        assert_eq!(out.stderr.trim_end(), said, "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(15), "{args:?}");
    }
    // A broker that drips its answer, a line or a byte a second (each read gets something
    // within its bound): the whole answer is bounded too, before the upgrade and after it.
    let drip = |prefix: &'static [u8], drop: &'static [u8]| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten().take(1) {
                let _ = stream.read(&mut [0u8; 4096]);
                let _ = stream.write_all(prefix);
                for _ in 0..30 {
                    std::thread::sleep(Duration::from_secs(1));
                    if stream.write_all(drop).is_err() {
                        break;
                    }
                }
            }
        });
        url
    };
    let dripping = [
        drip(b"HTTP/1.1 200 OK\r\n", b"x-a: b\r\n"),
        drip(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", b"x"),
    ];
    std::thread::scope(|scope| {
        for (index, url) in dripping.iter().enumerate() {
            let (sandbox, token) = (&sandbox, &token);
            scope.spawn(move || {
                let marker = sandbox.path(&format!("ran-{index}"));
                let started = Instant::now();
                let out = sandbox
                    .lease(["run", "--scope", "a", "--", "touch"])
                    .arg(&marker)
                    .env("LEASE_TOKEN", token)
                    .env("LEASE_BROKER", url)
                    .run()
                    .code_is(125)
                    .one_error_line();
                assert_eq!(
                    out.stderr.trim_end(),
                    format!("lease: cannot start the run: broker {url}: the answer took longer than it may: the broker sends it too slowly"),
                );
                assert!(started.elapsed() < Duration::from_secs(16), "{url}");
                assert!(!marker.exists(), "{url}");
            });
        }
    });
    // A run whose broker cannot be reached does not start its command.
    let marker = sandbox.path("ran");
    let out = sandbox
        .lease(["run", "--scope", "a", "--", "touch"])
        .arg(&marker)
        .env("LEASE_BROKER", &missing)
        .run()
        .code_is(125)
        .one_error_line();
    assert!(
        out.stderr
            .starts_with(&format!("lease: cannot start the run: broker {missing}: ")),
        "{out:?}"
    );
    assert!(!marker.exists());
    // Every subcommand goes through the broker, and fails closed without it.
    let out = sandbox
        .lease(["list"])
        .env("LEASE_BROKER", &missing)
        .run()
        .code_is(2)
        .one_error_line();
    assert!(
        out.stderr
            .starts_with(&format!("lease: broker {missing}: ")),
        "{out:?}"
    );
}

/// A real nginx in front of a broker that is down answers its own 502 page: every subcommand
/// says so in one line naming the broker, and fails closed with its documented status.
#[test]
fn an_error_page_from_a_server_in_front_of_the_broker_is_one_line_naming_it() {
    if Command::new("nginx").arg("-v").output().is_err() {
        crate::harness::skip("no-nginx", "nginx is not installed");
        return;
    }
    let sandbox = Sandbox::new();
    let token = sandbox.issue("read:articles");
    let port = free_port();
    let _nginx = NginxServer::start(
        sandbox.path("nginx"),
        &format!(
            "  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://unix:{}:; }} }}",
            sandbox.path("down.sock").display()
        ),
    );
    let broker = format!("http://127.0.0.1:{port}");
    let said = format!(
        "broker {broker} answered 502 and not as a lease broker does: is another server in between? (it began: <html>)"
    );
    for (args, code) in [
        (&["verify", "read:articles"][..], 2),
        (&["status"], 2),
        (&["issue", "--scope", "read:articles"], 2),
        (&["list"], 2),
        (&["run", "--scope", "read:articles", "--", "true"], 125),
    ] {
        let out = sandbox
            .lease(args)
            .env("LEASE_TOKEN", &token)
            .env("LEASE_BROKER", &broker)
            .run()
            .code_is(code)
            .one_error_line()
            .lacks_token(&token);
        assert!(out.stderr.trim_end().ends_with(&said), "{args:?}: {out:?}");
    }
}

#[test]
fn the_broker_listens_privately_reloads_on_sighup_and_stops_on_sigterm() {
    let sandbox = Sandbox::new();
    let config = sandbox.write_config(
        "[[route]]\nmethod = \"GET\"\npath = \"/articles/**\"\naction = \"read:articles\"\n",
    );
    let mut broker = Broker::start(&sandbox, &[]);
    let mode = fs::metadata(&broker.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = sandbox.issue("read:articles,read:drafts");
    let auth = |broker: &Broker, uri: &str| {
        let mut headers = bearer(&token);
        headers.push("X-Original-Method: GET".into());
        headers.push(format!("X-Original-URI: {uri}"));
        let url = format!("http://{}/v1/auth", broker.tcp);
        curl(&sandbox, &headers, &[&url]).status
    };
    assert_eq!(auth(&broker, "/articles/7"), 200);
    assert_eq!(auth(&broker, "/drafts/7"), 403);

    fs::write(
        &config,
        "[[route]]\nmethod = \"GET\"\npath = \"/drafts/*\"\naction = \"read:drafts\"\n",
    )
    .expect("config");
    broker.signal(Signal::SIGHUP);
    broker.expect_log("reloaded the config");
    assert_eq!(auth(&broker, "/drafts/7"), 200);
    assert_eq!(auth(&broker, "/articles/7"), 403);

    fs::write(
        &config,
        "[[route]]\npath = \"no-slash\"\naction = \"a:b\"\n",
    )
    .expect("config");
    broker.signal(Signal::SIGHUP);
    let line = broker.expect_log("reload failed");
    assert!(line.contains("keeping the previous config"), "{line}");
    assert_eq!(auth(&broker, "/drafts/7"), 200);
    // What a reload cannot change (the sockets were made at the start) is said, not ignored.
    fs::write(
        &config,
        format!(
            "socket_group = {}\nworkers = 3\n[[route]]\nmethod = \"GET\"\npath = \"/drafts/*\"\naction = \"read:drafts\"\n",
            nix::unistd::getgid()
        ),
    )
    .expect("config");
    broker.signal(Signal::SIGHUP);
    broker.expect_log("a changed socket_group takes effect at the next start");
    broker.expect_log("a changed workers takes effect at the next start");
    broker.expect_log("reloaded the config");
    let mode = fs::metadata(&broker.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the socket is as it was made");

    let socket = broker.socket.clone();
    let (status, log) = broker.stop();
    assert_eq!(status.code(), Some(0), "{log:?}");
    assert!(
        log.iter().any(|l| l.contains("SIGTERM: stopped accepting")),
        "{log:?}"
    );
    assert!(!socket.exists(), "the socket outlived the broker");
}

/// A SIGTERM that comes while the broker starts to watch its signals waits for the watcher and
/// stops it gracefully (one in between was dropped, and the broker ran on).
#[test]
fn a_sigterm_while_the_broker_starts_watching_signals_stops_it_gracefully() {
    let sandbox = Sandbox::new();
    let mut command = sandbox
        .lease(["serve", "--listen"])
        .arg(format!("unix:{}", sandbox.path("early.sock").display()))
        .env("LEASE_DEBUG_SIGNAL_DURING_INSTALL", "15")
        .command;
    if let Some(url) = sandbox.store_url() {
        command.arg("--store").arg(url);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lease serve");
    let log = Lines::from(child.stderr.take().expect("stderr"));
    let status = wait_for_exit(&mut child);
    let log = log.rest();
    assert_eq!(status.code(), Some(0), "{status:?}: {log:?}");
    assert!(
        log.iter().any(|l| l.contains("SIGTERM: stopped accepting")),
        "{log:?}"
    );
}

/// Envoy's `ext_authz` (HTTP mode) asks with the original method, and the original path under
/// its `path_prefix`; no `X-Original-*` or `X-Forwarded-*` header comes with it.
#[test]
fn forward_auth_takes_envoys_original_method_and_path_under_v1_auth() {
    let sandbox = Sandbox::new();
    sandbox.write_config(
        "[[route]]\nmethod = \"GET\"\npath = \"/articles/**\"\naction = \"read:articles\"\n\
         [[route]]\nmethod = \"*\"\npath = \"/drafts/**\"\naction = \"write:draft\"\n",
    );
    let broker = Broker::start(&sandbox, &[]);
    let token = sandbox.issue("read:articles");
    let ask = |method: &str, path: &str, extra: &[&str]| {
        let mut headers = bearer(&token);
        headers.extend(extra.iter().map(|h| (*h).to_owned()));
        let url = format!("http://{}/v1/auth{path}", broker.tcp);
        // curl waits for the body of an answer to -X HEAD; --head does not.
        let method = if method == "HEAD" {
            vec!["--head"]
        } else {
            vec!["-X", method]
        };
        curl(
            &sandbox,
            &headers,
            &[method.as_slice(), &[url.as_str()]].concat(),
        )
        .status
    };
    assert_eq!(ask("GET", "/articles/7?page=2", &[]), 200);
    assert_eq!(
        ask("HEAD", "/articles/7", &[]),
        200,
        "a GET route allows HEAD"
    );
    assert_eq!(ask("DELETE", "/articles/7", &[]), 403, "no DELETE route");
    assert_eq!(ask("POST", "/drafts/7", &[]), 403, "out of scope");
    // Where a web server's own headers are there, they say what is asked about, whatever the
    // path under /v1/auth (nginx, Caddy or Traefik pointed at /v1/auth/anything); half a pair
    // matches no route.
    let forwarded = [
        "X-Forwarded-Method: GET",
        "X-Forwarded-Uri: /articles/7?x=1",
    ];
    assert_eq!(ask("POST", "/caddy", &forwarded), 200);
    assert_eq!(ask("GET", "/drafts/7", &forwarded), 200);
    assert_eq!(
        ask("DELETE", "/articles/7", &["X-Forwarded-Method: GET"]),
        403
    );
    assert_eq!(
        ask("GET", "/articles/7", &["X-Original-URI: /articles/7"]),
        403
    );
    // Halves of two pairs make no pair, and a whole pair with half of the other is still half.
    assert_eq!(
        ask(
            "GET",
            "/articles/7",
            &["X-Original-Method: GET", "X-Forwarded-Uri: /articles/7"]
        ),
        403
    );
    // The trail still says what was asked about, as for any request no route allows.
    let last = sandbox.trail().pop().expect("an event");
    assert_eq!(
        (
            &last["event"],
            &last["reason"],
            &last["method"],
            &last["path"]
        ),
        (
            &serde_json::json!("denied"),
            &serde_json::json!("no route"),
            &serde_json::json!("GET"),
            &serde_json::json!("/articles/7")
        ),
        "{last}"
    );
    // A path's UTF-8 as nginx passes it, raw, is routed as its percent-encoded form is, and the
    // trail shows it percent-encoded.
    let raw = ["X-Original-Method: GET", "X-Original-URI: /articles/café"];
    assert_eq!(ask("GET", "/x", &raw), 200);
    let raw = ["X-Original-Method: GET", "X-Original-URI: /private/café"];
    assert_eq!(ask("GET", "/x", &raw), 403);
    let last = sandbox.trail().pop().expect("an event");
    assert_eq!(last["path"], "/private/caf%C3%A9", "{last}");
    assert_eq!(
        ask(
            "GET",
            "/articles/7",
            &[
                "X-Original-Method: GET",
                "X-Original-URI: /articles/7",
                "X-Forwarded-Method: GET"
            ]
        ),
        403
    );
    // Two pairs that disagree: one came from the client.
    assert_eq!(
        ask(
            "GET",
            "/articles/7",
            &[
                "X-Forwarded-Method: GET",
                "X-Forwarded-Uri: /articles/7",
                "X-Original-Method: DELETE"
            ]
        ),
        403
    );
    // Two lines of one header that disagree (a web server that appended to the client's
    // rather than replaced it): no route, whichever came first.
    let granted = ["X-Original-Method: GET", "X-Original-URI: /articles/7"];
    assert_eq!(ask("GET", "/articles/7", &granted), 200);
    for second in ["X-Original-URI: /admin/1", "X-Original-Method: DELETE"] {
        let headers = [granted[0], granted[1], second];
        assert_eq!(ask("GET", "/articles/7", &headers), 403, "{second}");
    }
    assert_eq!(
        ask("GET", "/articles/../drafts/7", &[]),
        403,
        "a path that climbs"
    );
    // A credential or an action sent twice: which one counts would be a guess.
    let twice = format!("Authorization: Bearer {token}");
    assert_eq!(ask("GET", "/articles/7", &[twice.as_str()]), 401);
    let actions = [
        "X-Lease-Action: read:articles",
        "X-Lease-Action: read:articles",
    ];
    assert_eq!(ask("GET", "/articles/7", &actions), 403);
    assert_eq!(ask("GET", "/articles/7", &actions[..1]), 200);
}

/// A route's glob is matched in time linear in the path: a path of 60 KB against a glob of
/// several stars is answered at once (a matcher that backtracks took hours on it, holding the
/// broker's one thread, and everyone's decisions, for as long); and a long path (over 4 KiB,
/// or 512 bytes holding `%`) is routed on a thread that may block, not the runtime's (even
/// linear, it takes milliseconds).
#[test]
fn a_long_path_against_a_glob_of_many_stars_is_answered_at_once() {
    let sandbox = Sandbox::new();
    sandbox.write_config(
        "[[route]]\npath = \"/**/*_*_*.json\"\naction = \"read:json\"\n[[route]]\npath = \"/**\"\naction = \"read:articles\"\n",
    );
    let broker = Broker::start(&sandbox, &[]);
    let token = sandbox.issue("read:articles");
    let ask = |path: &str| {
        let mut headers = bearer(&token);
        headers.push("X-Original-Method: GET".to_owned());
        headers.push(format!("X-Original-URI: {path}"));
        curl(
            &sandbox,
            &headers,
            &[&format!("http://{}/v1/auth", broker.tcp)],
        )
    };
    let on_etcd = sandbox.store_url().is_some();
    assert_eq!(ask("/articles/1").status, 200);
    // A query string is not routed, and not counted.
    assert_eq!(
        ask(&format!("/articles/1?q={}", "x".repeat(8_000))).status,
        200
    );
    if !on_etcd {
        // On etcd, every decision is made on a thread that may block.
        assert_eq!(serving_threads(broker.pid()), 0, "a short path's, inline");
    }
    // A path with `%` counts eight times its length (decoding and NFKC lengthen it).
    assert_eq!(ask(&"/caf%C3%A9".repeat(60)).status, 200);
    if !on_etcd {
        assert!(
            serving_threads(broker.pid()) >= 1,
            "600 bytes with %, inline"
        );
    }
    let started = Instant::now();
    let reply = ask(&format!("/{}", "a_".repeat(30_000)));
    assert_eq!(reply.status, 200, "{reply:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "answered in {took:?}");
}

/// A request no route allows is a decision too: denied (403), in the trail with the lease and
/// the path, and counted; a token that opens nothing is told so first (401), as on a route.
#[test]
fn forward_auth_without_a_route_is_denied_in_the_trail_and_counted() {
    let sandbox = Sandbox::new();
    routes_config(&sandbox);
    let broker = Broker::start(&sandbox, &[]);
    let issued = sandbox.issue_json("read:articles", &[]);
    let token = issued["token"].as_str().expect("token");
    let auth = |headers: &[String]| {
        curl(
            &sandbox,
            headers,
            &[&format!("http://{}/v1/auth", broker.tcp)],
        )
    };
    let ask = |uri: &str| {
        let mut headers = bearer(token);
        headers.push("X-Original-Method: GET".to_owned());
        headers.push(format!("X-Original-URI: {uri}"));
        auth(&headers)
    };
    assert_eq!(ask("/articles/1.html").status, 200);
    assert_eq!(ask("/private/notes?x=1").status, 403);
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).expect("trail");
    let denied: Vec<serde_json::Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .filter(|e: &serde_json::Value| e["reason"] == "no route")
        .collect();
    assert_eq!(denied.len(), 1, "{trail}");
    assert_eq!(denied[0]["event"], "denied");
    assert_eq!(denied[0]["lease"], issued["id"]);
    assert_eq!(denied[0]["method"], "GET");
    assert_eq!(denied[0]["path"], "/private/notes");
    assert!(denied[0]["client"].is_string(), "{trail}");
    let metrics = curl(&sandbox, &[], &[&format!("http://{}/metrics", broker.tcp)]);
    assert!(
        metrics
            .body
            .contains("lease_decisions_total{result=\"denied\",reason=\"no route\"} 1\n"),
        "{}",
        metrics.body
    );
    // An action named twice allows nothing, as no route does: counted, and in the trail.
    let mut twice = bearer(token);
    twice.extend([
        "X-Original-Method: GET".to_owned(),
        "X-Original-URI: /articles/2.html".to_owned(),
        "X-Lease-Action: read:articles".to_owned(),
        "X-Lease-Action: read:articles".to_owned(),
    ]);
    let reply = auth(&twice);
    assert_eq!(reply.status, 403, "{reply:?}");
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).expect("trail");
    assert!(
        trail
            .lines()
            .any(|l| l.contains(r#""reason":"no route""#)
                && l.contains(r#""path":"/articles/2.html""#)),
        "{trail}"
    );
    let metrics = curl(&sandbox, &[], &[&format!("http://{}/metrics", broker.tcp)]);
    assert!(
        metrics
            .body
            .contains("lease_decisions_total{result=\"denied\",reason=\"no route\"} 2\n"),
        "{}",
        metrics.body
    );
    sandbox
        .lease(["revoke", issued["id"].as_str().expect("id")])
        .run()
        .success();
    let dead = ask("/private/notes");
    assert_eq!(dead.status, 401);
    assert_eq!(
        dead.header("www-authenticate"),
        Some("Bearer realm=\"lease\"")
    );
    // No token at all: 401 too. Both are counted and logged by the token's reason, as a
    // verify is, and kept out of the trail.
    let none = auth(&[
        "X-Original-Method: GET".to_owned(),
        "X-Original-URI: /private/notes".to_owned(),
    ]);
    assert_eq!(none.status, 401);
    // Nor is a credential sent twice (which one counts would be a guess).
    let mut twice = bearer(token);
    twice.extend(bearer(token));
    twice.extend([
        "X-Original-Method: GET".to_owned(),
        "X-Original-URI: /articles/1.html".to_owned(),
    ]);
    let reply = auth(&twice);
    assert_eq!(reply.status, 401, "{reply:?}");
    // A path that would read as more fields of the log line is quoted there; one that holds
    // a token, even percent-encoded, is left out of it.
    let encoded = format!("/private/agt%5F{}", &token[4..]);
    for uri in ["/private/x lease=000000000000 granted", encoded.as_str()] {
        let reply = auth(&[
            "X-Original-Method: GET".to_owned(),
            format!("X-Original-URI: {uri}"),
        ]);
        assert_eq!(reply.status, 401, "{uri}");
    }
    let metrics = curl(&sandbox, &[], &[&format!("http://{}/metrics", broker.tcp)]);
    for (reason, count) in [("revoked", 1), ("no token", 4)] {
        let line =
            format!("lease_decisions_total{{result=\"denied\",reason=\"{reason}\"}} {count}\n");
        assert!(metrics.body.contains(&line), "{reason}: {}", metrics.body);
    }
    let (_, log) = broker.stop();
    let log = log.join("\n");
    assert!(
        log.lines().any(
            |l| l.contains("denied: no route: method=GET path=/private/notes client=")
                && l.ends_with(": revoked")
        ),
        "{log}"
    );
    assert!(
        log.lines().any(
            |l| l.contains("denied: no route: method=GET path=/private/notes client=")
                && l.ends_with(": no token")
        ),
        "{log}"
    );
    assert!(
        log.contains(r#"path="/private/x lease=000000000000 granted" client="#),
        "{log}"
    );
    assert!(!log.contains(&token[4..]), "{log}");
    assert!(log.contains("path=\"(left out: a lease token)\""), "{log}");
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).expect("trail");
    let no_route = trail.lines().filter(|l| l.contains("no route")).count();
    assert_eq!(no_route, 2, "{trail}");
}

/// The API refuses a token where an action, a scope or a lease id goes, as the command line
/// does, and never quotes it: not in an answer, the store, the trail or the log.
#[test]
fn a_token_where_an_action_a_scope_or_an_id_goes_is_refused_and_never_echoed() {
    let sandbox = Sandbox::new();
    let mut broker = Broker::start(&sandbox, &[]);
    let holder = sandbox.issue("read:*");
    let victim = sandbox.issue("read:articles");
    let tcp = |path: &str| format!("http://{}{path}", broker.tcp);
    let socket = broker.socket.display().to_string();
    let verify = curl(
        &sandbox,
        &bearer(&holder),
        &[
            "--data",
            &format!(r#"{{"action":"read:{victim}"}}"#),
            &tcp("/v1/verify"),
        ],
    );
    assert_eq!(verify.status, 400, "{verify:?}");
    assert!(
        verify.body.contains("that is a token, not an action"),
        "{verify:?}"
    );
    let mut headers = bearer(&holder);
    headers.push(format!("X-Lease-Action: read:{victim}"));
    let action = curl(&sandbox, &headers, &[&tcp("/v1/auth")]);
    assert_eq!(action.status, 403, "{action:?}");
    // A web server passes on its client's method: a request that matches no route is in the
    // trail with it, and a token there is not.
    let mut headers = bearer(&holder);
    headers.push(format!("X-Original-Method: {victim}"));
    headers.push("X-Original-URI: /nowhere".to_owned());
    let method = curl(&sandbox, &headers, &[&tcp("/v1/auth")]);
    assert_eq!(method.status, 403, "{method:?}");
    let envoy = curl(
        &sandbox,
        &bearer(&holder),
        &["-X", &victim, &tcp("/v1/auth/x")],
    );
    assert_eq!(envoy.status, 403, "{envoy:?}");
    // A token holder's nested mint, and an operator's root mint.
    let scope = format!(r#"{{"scope":["read:{victim}"]}}"#);
    let nested = curl(
        &sandbox,
        &bearer(&holder),
        &["--data", &scope, &tcp("/v1/leases")],
    );
    assert_eq!(nested.status, 400, "{nested:?}");
    let root = curl(
        &sandbox,
        &[],
        &[
            "--unix-socket",
            &socket,
            "--data",
            &scope,
            "http://lease/v1/leases",
        ],
    );
    assert_eq!(root.status, 400, "{root:?}");
    // An operator's revoke and suggest, of a "lease id" that is a token.
    for command in [
        format!(r#"{{"command":"revoke","ids":["{victim}"]}}"#),
        format!(r#"{{"command":"suggest","id":"{victim}","json":false}}"#),
        format!(r#"{{"command":"log","id":"{victim}","since":null,"json":false}}"#),
    ] {
        let reply = curl(
            &sandbox,
            &[],
            &[
                "--unix-socket",
                &socket,
                "--data",
                &command,
                "http://lease/v1/commands",
            ],
        );
        assert_eq!(reply.status, 400, "{command}: {reply:?}");
        assert!(
            reply.body.contains("that is a token, not a lease id"),
            "{command}: {reply:?}"
        );
        assert!(!reply.body.contains(&victim), "{command}: {reply:?}");
    }
    let answers = [verify, action, method, envoy, nested, root];
    for answer in &answers {
        assert!(!format!("{answer:?}").contains(&victim), "{answer:?}");
    }
    for file in sandbox.state_files() {
        let text = String::from_utf8_lossy(&fs::read(&file).unwrap_or_default()).into_owned();
        assert!(
            !text.contains(&victim),
            "the token is in {}",
            file.display()
        );
    }
    broker.expect_log("denied");
    let (_, log) = broker.stop();
    assert!(!log.join("\n").contains(&victim), "{log:?}");
}

/// The limits docs/api.md gives: a head over 64 KiB is `431`, a body over 64 KiB is `413`.
/// Connections over TCP up to the broker's limit, held open by a client that sends nothing,
/// leave the unix socket's own: its operator still lists, a local run still starts.
#[test]
fn a_flood_of_tcp_connections_leaves_the_unix_sockets_connections_alone() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    use std::io::Read as _;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("the limit on descriptors");
    if hard < 1200 {
        crate::harness::skip(
            "few-descriptors",
            "the hard limit on descriptors is under 1200",
        );
        return;
    }
    if soft < 1200 {
        setrlimit(Resource::RLIMIT_NOFILE, 1200.max(soft), hard).expect("raising the limit");
    }
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    // 1,024 connections take the TCP pool; the next is closed as it comes.
    let mut held: Vec<std::net::TcpStream> = (0..1024)
        .map(|_| std::net::TcpStream::connect(&broker.tcp).expect("connect"))
        .collect();
    let mut refused = std::net::TcpStream::connect(&broker.tcp).expect("connect");
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert!(
        matches!(refused.read(&mut byte), Ok(0)),
        "the 1,025th connection over TCP was served (or kept waiting)"
    );
    let health = curl(
        &sandbox,
        &[],
        &[
            "--unix-socket",
            &broker.socket.display().to_string(),
            "http://lease/healthz",
        ],
    );
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    sandbox
        .lease(["list"])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success();
    sandbox
        .lease(["run", "--scope", "a:b", "--", "true"])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success();
    held.clear();
}

/// Lets other uids pass through `sandbox` (not list it), reach a socket in `sock/` and write
/// in `out/`; the store stays 0700, root's.
fn open_to_other_uids(sandbox: &Sandbox) {
    use std::os::unix::fs::PermissionsExt as _;
    for (dir, mode) in [("", 0o711), ("sock", 0o711), ("out", 0o1777)] {
        let path = sandbox.path(dir);
        fs::create_dir_all(&path).expect("dir");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
    }
}

/// A broker whose user is not in `socket_group` cannot give it the socket: it stops, in one
/// line that says how to put the user in the group, and leaves no socket behind.
#[test]
fn a_socket_group_the_brokers_user_is_not_in_stops_it_naming_the_fix() {
    use std::os::unix::fs::PermissionsExt as _;
    if !nix::unistd::geteuid().is_root() {
        crate::harness::skip("not-root", "only root can run the broker as another uid");
        return;
    }
    let sandbox = Sandbox::new();
    open_to_other_uids(&sandbox);
    let bin = sandbox.path("bin");
    fs::create_dir(&bin).expect("bin");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).expect("chmod");
    let built = crate::harness::lease_bin();
    for name in ["lease", "lease-broker"] {
        fs::copy(built.with_file_name(name), bin.join(name)).expect("copy");
    }
    let config = sandbox.path("out/config.toml");
    fs::write(&config, "socket_group = \"www-data\"\n").expect("config");
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).expect("chmod");
    let socket = sandbox.path("out/group.sock");
    let out = sandbox
        .command("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin.join("lease"))
        .arg("--state-dir")
        .arg(sandbox.path("out/state"))
        .arg("--config")
        .arg(&config)
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .run()
        .code_is(2)
        .one_error_line();
    assert!(
        out.stderr.contains("giving the socket to socket_group (gid 33): EPERM")
            && out.stderr.trim_end().ends_with(
                "the broker's user must be in that group (SupplementaryGroups= in its systemd unit, or usermod -aG GROUP USER)"
            ),
        "{out:?}"
    );
    assert!(!socket.exists(), "the socket was left behind");
}

/// An agent in `socket_group` cannot take the unix sockets' connections from everyone else:
/// one uid other than an operator's holds at most 512 of them (the rest close as they come),
/// kept-alive or held as runs, another uid still gets in, and so does an operator, on places
/// kept for operators.
#[test]
fn one_uid_cannot_take_every_connection_on_the_socket() {
    if !nix::unistd::geteuid().is_root() {
        crate::harness::skip("not-root", "only root can connect as other uids");
        return;
    }
    let sandbox = Sandbox::new();
    open_to_other_uids(&sandbox);
    sandbox.write_config("socket_group = \"nogroup\"\n");
    let mut broker = Broker::start_at(&sandbox, sandbox.path("sock/broker.sock"), &[]);
    // 600 connections as uid 65534, each asking for /healthz once: how many are answered,
    // how many are closed unanswered; then they are held until `go` appears.
    // 600 connections, one after the other, each asking once (argv[3]: /healthz, kept alive,
    // or a run's upgrade, held on the upgraded socket): how many are answered, how many closed
    // unanswered; then they are held until `go` appears.
    let flood = r#"
import os, socket, sys, time
ask = {
    "healthz": (b"GET /healthz HTTP/1.1\r\nHost: lease\r\n\r\n", b"HTTP/1.1 200"),
    "runs": (b"POST /v1/runs HTTP/1.1\r\nHost: lease\r\nConnection: Upgrade\r\n"
             b"Upgrade: lease-run\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 101"),
}[sys.argv[3]]
held, served, closed = [], 0, 0
for _ in range(600):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(sys.argv[1])
    held.append(s)
    try:
        s.sendall(ask[0])
        answer = s.recv(200)
    except OSError:
        answer = b""
    if answer.startswith(ask[1]):
        served += 1
    else:
        closed += 1
print(f"served {served} closed {closed}", flush=True)
deadline = time.time() + 30
while not os.path.exists(sys.argv[2]) and time.time() < deadline:
    time.sleep(0.02)
"#;
    let go = sandbox.path("out/go");
    let socket = broker.socket.clone();
    // The flood as `uid` (in nobody's group), asking as `ask` says.
    let flood_as = |uid: u32, ask: &str| {
        sandbox
            .command("setpriv")
            .arg(format!("--reuid={uid}"))
            .args(["--regid=65534", "--clear-groups", "--"])
            // The system's: a user's own (pyenv's, in root's home) is not nobody's to run.
            .args(["/usr/bin/python3", "-c", flood])
            .arg(&socket)
            .arg(&go)
            .arg(ask)
            .start()
    };
    let mut flooding = flood_as(65534, "healthz");
    let counted = flooding.lines.expect("served ");
    assert_eq!(counted, "served 512 closed 88");
    // Said in the log (once a second at most, not once a connection).
    broker.expect_log(
        "refused a connection: unix:uid=65534 holds 512 connections, the most one uid may",
    );
    // Another uid of the group is served while the first holds its 512.
    let other = sandbox
        .command("setpriv")
        .args(["--reuid=65532", "--regid=65534", "--clear-groups", "--"])
        .args(["curl", "-s", "--max-time", "5", "--unix-socket"])
        .arg(&broker.socket)
        .arg("http://lease/healthz")
        .run()
        .success();
    assert_eq!(other.stdout, "ok\n");
    // With every other place taken by a second uid's 512, held runs this time (upgraded, they
    // keep their places), an operator still gets in.
    let mut second = flood_as(65533, "runs");
    assert_eq!(second.lines.expect("served "), "served 512 closed 88");
    sandbox
        .lease(["list"])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success();
    fs::write(&go, "").expect("go");
    flooding.wait();
    second.wait();
}

#[test]
fn a_head_over_64_kib_is_431_and_a_body_over_16_kib_is_413() {
    use std::io::Read as _;
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let status = |request: String| {
        let mut stream = std::net::TcpStream::connect(&broker.tcp).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(request.as_bytes()).expect("send");
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .unwrap_or_else(|| panic!("not an answer: {answer:?}"))
            .to_owned()
    };
    let head = |padding: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: lease\r\nX-Pad: {}\r\nConnection: close\r\n\r\n",
            "p".repeat(padding)
        )
    };
    assert_eq!(status(head(60 * 1024)), "200");
    assert_eq!(status(head(64 * 1024)), "431");
    assert_eq!(status(head(100 * 1024)), "431");
    let body = |size: usize| {
        format!(
            "POST /v1/verify HTTP/1.1\r\nHost: lease\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n{}",
            " ".repeat(size)
        )
    };
    assert_eq!(
        status(body(64 * 1024)),
        "400",
        "within the limit: read, and not JSON"
    );
    assert_eq!(status(body(64 * 1024 + 1)), "413");
    // A chunked body that is not one (a chunk size that is no number) is a bad request.
    assert_eq!(
        status(
            "POST /v1/verify HTTP/1.1\r\nHost: lease\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nZZ\r\nxx\r\n0\r\n\r\n"
                .to_owned()
        ),
        "400"
    );
}

#[test]
fn plain_http_off_loopback_is_refused_unless_asked_for() {
    let sandbox = Sandbox::new();
    let out = sandbox
        .lease(["serve", "--listen", "0.0.0.0:0"])
        .run()
        .code_is(2)
        .one_error_line();
    assert!(
        out.stderr.starts_with(
            "lease: cannot serve: cannot listen on 0.0.0.0:0: 0.0.0.0 is not a loopback address"
        ),
        "{out:?}"
    );
    assert!(out.stderr.contains("--insecure-http"), "{out:?}");
    serves_then_stops(
        &sandbox,
        &["--insecure-http", "--listen", "0.0.0.0:0"],
        "listening on 0.0.0.0:",
        Signal::SIGINT,
    );
}

/// `lease serve ARGS` says `listening` (a line with `needle`), and `signal` stops it with 0.
fn serves_then_stops(sandbox: &Sandbox, args: &[&str], needle: &str, signal: Signal) {
    let mut command = sandbox.lease(["serve"]).args(args).command;
    command.stderr(Stdio::piped()).stdout(Stdio::null());
    let mut child = command.spawn().expect("spawn");
    let mut log = Lines::from(child.stderr.take().expect("stderr"));
    log.expect(needle);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid")),
        signal,
    )
    .expect("kill");
    assert_eq!(wait_for_exit(&mut child).code(), Some(0));
}

#[test]
fn a_second_broker_on_a_live_socket_is_refused_and_a_stale_one_is_replaced() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let address = broker.endpoint();
    let out = sandbox
        .lease(["serve", "--listen", &address])
        .run()
        .code_is(2);
    assert!(
        out.stderr.contains("another broker is listening there"),
        "{out:?}"
    );
    // SIGKILL leaves the socket file behind; the next broker replaces it.
    let socket = broker.socket.clone();
    kill_pid(broker.pid());
    drop(broker);
    assert!(socket.exists());
    let broker = Broker::start(&sandbox, &[]);
    let (status, _) = broker.stop();
    assert_eq!(status.code(), Some(0));
    assert_eq!(death_signal(status), None);
}

/// The systemd unit's `ExecStart` runs as written (with the sandbox for /var/lib and /run),
/// `ExecReload` (SIGHUP) reloads, and its `KillSignal` stops the broker with 0, which systemd
/// counts as a clean stop.
#[test]
fn the_example_systemd_unit_starts_reloads_and_stops_the_broker() {
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lease-broker.service"),
    )
    .expect("unit");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .to_owned()
    };
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("KillSignal"), "SIGTERM");
    let sandbox = Sandbox::new();
    fs::create_dir_all(sandbox.path("run/lease")).expect("runtime dir");
    let exec = value("ExecStart")
        .replace("/var/lib/lease", &sandbox.state_dir().display().to_string())
        .replace(
            "/run/lease",
            &sandbox.path("run/lease").display().to_string(),
        );
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/lease"));
    let mut command = sandbox.command(crate::harness::lease_bin()).command;
    command
        .args(words)
        .args(
            sandbox
                .store_url()
                .map(|url| ["--store", url])
                .into_iter()
                .flatten(),
        )
        .stderr(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = command.spawn().expect("spawn");
    let mut log = Lines::from(child.stderr.take().expect("stderr"));
    log.expect("listening on unix:");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let token = sandbox.issue("read:articles");
    let broker = format!("unix:{}", sandbox.path("run/lease/broker.sock").display());
    sandbox
        .lease(["verify", "read:articles"])
        .env("LEASE_TOKEN", &token)
        .env("LEASE_BROKER", &broker)
        .run()
        .success();
    nix::sys::signal::kill(pid, Signal::SIGHUP).expect("reload");
    log.expect("reloaded the config");
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("stop");
    assert_eq!(wait_for_exit(&mut child).code(), Some(0));
}

/// nginx and Caddy put in front of a site: each asks the broker for every request.
struct Site {
    dir: PathBuf,
    upstream_log: PathBuf,
}

impl Site {
    fn new(sandbox: &Sandbox) -> Site {
        let dir = sandbox.path("site");
        fs::create_dir_all(dir.join("articles")).expect("site");
        fs::create_dir_all(dir.join("admin")).expect("site");
        fs::write(dir.join("articles/1.html"), "article one\n").expect("page");
        fs::write(dir.join("admin/secret.html"), "admin page\n").expect("page");
        Site {
            upstream_log: sandbox.path("upstream.log"),
            dir,
        }
    }
}

fn routes_config(sandbox: &Sandbox) {
    sandbox.write_config(
        "[[route]]\nmethod = \"GET\"\npath = \"/articles/**\"\naction = \"read:articles\"\n\
         [[route]]\nmethod = \"*\"\npath = \"/admin/**\"\naction = \"admin:site\"\n",
    );
}

/// An nginx started daemonized in `dir` (its start returns once it listens), with `http` as
/// the inside of its `http { }` block, after the settings every test's nginx shares (temporary
/// paths in `dir/tmp`, no access log unless a server sets one); stopped when dropped.
pub struct NginxServer {
    dir: PathBuf,
}

impl NginxServer {
    pub fn start(dir: PathBuf, http: &str) -> NginxServer {
        fs::create_dir_all(dir.join("tmp")).expect("nginx dir");
        let user = if nix::unistd::geteuid().is_root() {
            "user root;"
        } else {
            ""
        };
        let text = format!(
            "{user}
daemon on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fcgi; uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
{http}
}}
",
            d = dir.display(),
        );
        fs::write(dir.join("nginx.conf"), text).expect("nginx.conf");
        let server = NginxServer { dir };
        let out = server.command().output().expect("nginx");
        assert!(out.status.success(), "nginx did not start: {out:?}");
        server
    }

    fn command(&self) -> Command {
        let mut command = Command::new("nginx");
        command
            .arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .arg("-c")
            .arg(self.dir.join("nginx.conf"));
        command
    }
}

impl Drop for NginxServer {
    fn drop(&mut self) {
        let _ = self.command().args(["-s", "stop"]).output();
    }
}

/// nginx with `auth_request` on `front`, proxying to a second server on `upstream` that serves
/// the site and logs each request it sees.
struct Nginx;

impl Nginx {
    fn start(sandbox: &Sandbox, broker: &Broker, site: &Site, front: u16) -> NginxServer {
        let upstream = free_port();
        let http = format!(
            "  log_format path $request_method:$request_uri;
  upstream lease {{ server unix:{socket}; keepalive 4; }}
  server {{
    listen 127.0.0.1:{upstream};
    access_log {log} path;
    root {site};
  }}
  server {{
    listen 127.0.0.1:{front};
    location / {{
      auth_request /_lease;
      proxy_pass http://127.0.0.1:{upstream};
    }}
    location = /_lease {{
      internal;
      proxy_pass http://lease/v1/auth;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_pass_request_body off;
      proxy_set_header Content-Length \"\";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Lease-Action \"\";
    }}
  }}",
            log = site.upstream_log.display(),
            site = site.dir.display(),
            socket = broker.socket.display(),
        );
        NginxServer::start(sandbox.path("nginx"), &http)
    }
}

/// Caddy with `forward_auth`, started with `caddy start` (which returns once the config is
/// running) and stopped by its pid file.
struct Caddy {
    pidfile: PathBuf,
}

impl Caddy {
    fn start(sandbox: &Sandbox, broker: &Broker, site: &Site, front: u16) -> Caddy {
        let dir = sandbox.path("caddy");
        fs::create_dir_all(&dir).expect("caddy dir");
        let upstream = free_port();
        let caddyfile = dir.join("Caddyfile");
        let text = format!(
            "{{
  admin off
  auto_https off
  storage file_system {d}/data
}}
http://127.0.0.1:{front} {{
  forward_auth unix/{socket} {{
    uri /v1/auth
    copy_headers X-Lease-Id X-Lease-Scope
    header_up -X-Lease-Action
    header_up -X-Original-URI
    header_up -X-Original-Method
  }}
  reverse_proxy 127.0.0.1:{upstream} {{
    header_up Host {{upstream_hostport}}
  }}
}}
http://127.0.0.1:{upstream} {{
  log {{
    output file {log}
    format json
  }}
  root * {site}
  file_server
}}
",
            d = dir.display(),
            socket = broker.socket.display(),
            log = site.upstream_log.display(),
            site = site.dir.display(),
        );
        fs::write(&caddyfile, text).expect("Caddyfile");
        let pidfile = dir.join("caddy.pid");
        // `caddy start` returns once the config runs; the server it leaves behind inherits
        // its stdout and stderr, so they go to a file, not to a pipe read until closed.
        let log = dir.join("caddy.log");
        let mut command = sandbox
            .command("caddy")
            .arg("start")
            .arg("--config")
            .arg(&caddyfile)
            .arg("--adapter")
            .arg("caddyfile")
            .arg("--pidfile")
            .arg(&pidfile)
            .command;
        let file = fs::File::create(&log).expect("caddy log");
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        let mut child = command.spawn().expect("caddy");
        let status = wait_for_exit(&mut child);
        assert_eq!(
            status.code(),
            Some(0),
            "caddy did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        Caddy { pidfile }
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        if let Some(pid) = fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            kill_pid(pid);
        }
    }
}

/// The same story told through nginx or Caddy at `front`: inside `lease run --scope
/// read:articles` the token gets the article, not the admin page (and the site never sees
/// that request); after the run, 401; after `kill -9` of a second run's wrapper, 401 within
/// a second.
fn the_site_answers_only_what_the_run_may_do(sandbox: &Sandbox, site: &Site, front: u16) {
    let url = format!("http://127.0.0.1:{front}");
    let script = format!(
        "printf 'Authorization: Bearer %s\\n' \"$LEASE_TOKEN\" > h && \
         a=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 -H @h {url}/articles/1.html) && \
         b=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 -H @h {url}/admin/secret.html) && \
         c=$(curl -s --max-time 10 -H @h {url}/articles/1.html) && \
         echo \"$a $b $c\" && cp h after-run"
    );
    let out = sandbox.run_sh("read:articles", &script).run().success();
    assert_eq!(out.stdout, "200 403 article one\n", "{out:?}");
    // A client naming its own action, or its own original URI, gets nothing more: the
    // documented configurations clear those headers before asking the broker.
    let spoof = format!(
        "printf 'Authorization: Bearer %s\\nX-Lease-Action: read:articles\\nX-Original-URI: /articles/1.html\\nX-Forwarded-Uri: /articles/1.html\\n' \"$LEASE_TOKEN\" > s && \
         curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 -H @s {url}/admin/secret.html"
    );
    let out = sandbox.run_sh("read:articles", &spoof).run().success();
    assert_eq!(out.stdout, "403", "{out:?}");
    // The site logs a request after answering it: wait for both article requests (the admin
    // request came between them, so it would be logged by then too).
    let deadline = Instant::now() + crate::harness::PATIENCE;
    let seen = loop {
        let seen = fs::read_to_string(&site.upstream_log).unwrap_or_default();
        if seen.matches("/articles/1.html").count() >= 2 {
            break seen;
        }
        assert!(Instant::now() < deadline, "the site logged {seen:?}");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        !seen.contains("/admin/"),
        "the site saw a denied request: {seen}"
    );

    // The run has ended: its token is worth nothing.
    let headers = fs::read_to_string(sandbox.path("after-run")).expect("headers");
    let after = curl(
        sandbox,
        &[headers.trim().to_owned()],
        &[&format!("{url}/articles/1.html")],
    );
    assert_eq!(after.status, 401, "{after:?}");

    // A run whose wrapper is killed: its token stops working within a second.
    let mut running = sandbox
        .run_sh(
            "read:articles",
            "printf 'Authorization: Bearer %s\\n' \"$LEASE_TOKEN\" > k && echo ready && exec sleep 30",
        )
        .start();
    running.lines.expect("ready");
    let headers = vec![
        fs::read_to_string(sandbox.path("k"))
            .expect("headers")
            .trim()
            .to_owned(),
    ];
    let page = format!("{url}/articles/1.html");
    assert_eq!(curl(sandbox, &headers, &[&page]).status, 200);
    let _timing = crate::harness::timing();
    running.signal(Signal::SIGKILL);
    let killed = Instant::now();
    let _ = running.wait();
    loop {
        let status = curl(sandbox, &headers, &[&page]).status;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "still {status} a second after kill -9"
        );
    }
}

/// Starts the broker with a route table, a site, and `server` (nginx or Caddy) in front of
/// it on a free port; tells the story; checks the broker's log.
fn behind<S>(server: &str, version: &str, start: impl FnOnce(&Sandbox, &Broker, &Site, u16) -> S) {
    if Command::new(server).arg(version).output().is_err() {
        crate::harness::skip(
            &format!("no-{server}"),
            &format!("{server} is not installed"),
        );
        return;
    }
    let sandbox = Sandbox::new();
    routes_config(&sandbox);
    let broker = Broker::start(&sandbox, &[]);
    let site = Site::new(&sandbox);
    let front = free_port();
    let running = start(&sandbox, &broker, &site, front);
    the_site_answers_only_what_the_run_may_do(&sandbox, &site, front);
    drop(running);
    let (status, log) = broker.stop();
    assert_eq!(status.code(), Some(0));
    let log = log.join("\n");
    assert!(log.contains("route=\"GET /articles/**\""), "{log}");
    assert!(log.contains("denied admin:site: out of scope"), "{log}");
    assert!(!log.contains("agt_"), "{log}");
    // Each decision is in the trail with its route, the web server as the client, and the
    // address the request came from as the web server says it.
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).expect("trail");
    let decisions: Vec<serde_json::Value> = trail
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .filter(|e: &serde_json::Value| e["route"].is_string())
        .collect();
    assert!(!decisions.is_empty(), "{trail}");
    for event in &decisions {
        assert!(event["client"].is_string(), "{event}");
        assert_eq!(event["forwarded_for"], "127.0.0.1", "{event}");
    }
}

#[test]
fn nginx_auth_request_through_the_broker_serves_only_what_the_run_may_read() {
    behind("nginx", "-v", Nginx::start);
}

#[test]
fn caddy_forward_auth_through_the_broker_serves_only_what_the_run_may_read() {
    behind("caddy", "version", Caddy::start);
}

/// `lease issue` through the broker: an operator (the broker's own uid, on its socket) mints a
/// root lease; over TCP nobody is an operator, so only a token holder may mint, and only a lease
/// nested in its own; the broker's policy decides, whatever the client's config says.
#[test]
fn issue_through_the_broker_follows_who_may_mint_what() {
    let sandbox = Sandbox::new();
    sandbox.write_config("max_ttl = \"1h\"\n");
    let broker = Broker::start(&sandbox, &[]);
    let tcp = format!("http://{}", broker.tcp);
    let client = |endpoint: &str| {
        sandbox
            .command(crate::harness::lease_bin())
            .env("LEASE_BROKER", endpoint)
            // The client's own config and store are decoys: only the broker's count.
            .env("LEASE_CONFIG", "/dev/null")
            .env("LEASE_STATE_DIR", sandbox.path("client-state"))
    };

    // An operator on the socket: a root lease, printed as a local issue prints it.
    let out = client(&broker.endpoint())
        .arg("issue")
        .arg("--scope")
        .arg("read:articles,write:draft")
        .arg("--json")
        .run()
        .success();
    let issued = out.json();
    let keys: Vec<&str> = issued
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["expires_at", "id", "scope", "token"]);
    assert!(out.stdout.starts_with("{\"id\":"), "{out:?}");
    let root = issued["token"].as_str().expect("token").to_owned();
    assert_eq!(sandbox.verify(&root, "write:draft").code(), Some(0));

    // The broker's max_ttl holds, not the client's config.
    let out = client(&broker.endpoint())
        .args(["issue", "--scope", "a:b", "--ttl", "10h"])
        .run()
        .code_is(2)
        .one_error_line();
    assert!(out.stderr.contains("max_ttl"), "{out:?}");

    // Over TCP without a token: nobody is an operator there.
    let out = client(&tcp)
        .args(["issue", "--scope", "a:b"])
        .run()
        .code_is(2)
        .one_error_line();
    assert!(
        out.stderr
            .starts_with("lease: not allowed: minting a root lease needs an operator"),
        "{out:?}"
    );

    // A token holder over TCP: a narrower lease nested in its own, nothing wider.
    let nested = client(&tcp)
        .args(["issue", "--scope", "read:articles"])
        .env("LEASE_TOKEN", &root)
        .run()
        .success()
        .stdout
        .trim()
        .to_owned();
    assert_eq!(sandbox.verify(&nested, "read:articles").code(), Some(0));
    assert_eq!(sandbox.verify(&nested, "write:draft").code(), Some(1));
    let out = client(&tcp)
        .args(["issue", "--scope", "admin:all"])
        .env("LEASE_TOKEN", &root)
        .run()
        .code_is(2)
        .one_error_line()
        .lacks_token(&root);
    assert!(out.stderr.contains("admin:all"), "{out:?}");
    // A token whose lease can no longer grant is no right at all: refused as locally.
    sandbox
        .lease(["revoke", issued["id"].as_str().expect("id")])
        .run()
        .success();
    let out = client(&tcp)
        .args(["issue", "--scope", "read:articles"])
        .env("LEASE_TOKEN", &root)
        .run()
        .code_is(2)
        .lacks_token(&root);
    assert!(
        out.stderr
            .starts_with("lease: the parent lease in the environment is revoked: "),
        "{out:?}"
    );
    assert!(
        !sandbox.path("client-state").exists(),
        "the client opened a store"
    );
    let (status, log) = broker.stop();
    assert_eq!(status.code(), Some(0));
    let log = log.join("\n");
    assert!(!log.contains(&root) && !log.contains(&nested), "{log}");
}

/// `operators` names who may mint root leases on the socket: a uid not in it may not.
#[test]
fn only_the_configured_operators_mint_root_leases() {
    let sandbox = Sandbox::new();
    sandbox.write_config("operators = [4242424]\n");
    let broker = Broker::start(&sandbox, &[]);
    let out = sandbox
        .lease(["issue", "--scope", "a:b"])
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .code_is(2)
        .one_error_line();
    assert!(out.stderr.contains("needs an operator"), "{out:?}");
    // Nor act on a lease by its id without its token: the line names both rights.
    for args in [
        &["revoke", "0123456789ab"][..],
        &["log", "--id", "0123456789ab"],
        &["suggest", "0123456789ab"],
    ] {
        let out = sandbox
            .lease(args)
            .env("LEASE_BROKER", broker.endpoint())
            .env_remove("LEASE_TOKEN")
            .run()
            .code_is(2)
            .one_error_line();
        assert!(
            out.stderr.contains("not allowed")
                && out.stderr.contains("needs an operator")
                && out.stderr.contains("LEASE_TOKEN"),
            "{args:?}: {out:?}"
        );
    }
    let out = sandbox
        .lease(["serve"])
        .env(
            "LEASE_CONFIG",
            sandbox.write_config("operators = [\"no-such-user-here\"]\n"),
        )
        .run()
        .code_is(2)
        .one_error_line();
    assert!(
        out.stderr
            .contains("operators: no user is called 'no-such-user-here' in /etc/passwd"),
        "{out:?}"
    );
}

/// The token of a lease, read by an outside process from the file the command wrote it to.
fn token_in(sandbox: &Sandbox, file: &str) -> String {
    fs::read_to_string(sandbox.path(file))
        .expect("token file")
        .trim()
        .to_owned()
}

/// What the broker says of a token now, over its socket: the reason.
pub fn reason_of(sandbox: &Sandbox, broker: &Broker, token: &str) -> String {
    let reply = verify_over_http(sandbox, broker, Some(token), "{\"action\":\"a:b\"}");
    let json: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    json["reason"].as_str().expect("reason").to_owned()
}

/// `lease run` through the broker: the broker mints and holds the lease, the command gets
/// `LEASE_BROKER` (not a store), its nested runs and verifies go to the same broker, its exit
/// status is lease's, and its lease is revoked when it ends.
#[test]
fn run_through_the_broker_hands_the_command_the_broker_and_revokes_at_the_end() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let out = sandbox
        .lease(["run", "--scope", "a:b,c:d", "--", "sh", "-c"])
        .arg(
            "printf %s \"$LEASE_TOKEN\" > token; echo \"broker=${LEASE_BROKER:-none} store=${LEASE_STATE_DIR:-none} config=${LEASE_CONFIG:-none}\"; \
             lease verify a:b && echo outer-granted; \
             lease run --scope a:b -- sh -c 'lease verify a:b && echo nested-granted; lease verify c:d 2>/dev/null || echo nested-denied-c'; \
             exit 7",
        )
        .env("LEASE_BROKER", broker.endpoint())
        .env("LEASE_STATE_DIR", sandbox.path("client-state"))
        .env("LEASE_CONFIG", "/dev/null")
        .run()
        .code_is(7);
    // The broker's store and policy are the command's: neither a state dir nor a config.
    assert_eq!(
        out.stdout,
        format!(
            "broker={} store=none config=none\nouter-granted\nnested-granted\nnested-denied-c\n",
            broker.endpoint()
        ),
        "{out:?}"
    );
    assert_eq!(out.stderr, "");
    let token = token_in(&sandbox, "token");
    assert_eq!(reason_of(&sandbox, &broker, &token), "revoked");
    assert!(!sandbox.path("client-state").exists());
    let trail = fs::read_to_string(sandbox.state_dir().join("audit.jsonl")).expect("trail");
    assert!(
        trail.contains("\"event\":\"child_exit\"") && trail.contains("\"exit_code\":7"),
        "{trail}"
    );
    assert!(!trail.contains(&token));
    let (status, log) = broker.stop();
    assert_eq!(status.code(), Some(0));
    assert!(!log.join("\n").contains(&token));
}

/// The wrapper SIGKILLed: its connection closes, and the broker ends the lease at once, with
/// every lease nested in it.
#[test]
fn a_killed_run_loses_its_lease_through_the_broker_at_once() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let mut running = sandbox
        .run_sh(
            "a:b",
            "printf %s \"$LEASE_TOKEN\" > token; LEASE_TOKEN=$(lease issue --scope a:b) && printf %s \"$LEASE_TOKEN\" > nested; echo ready; exec sleep 30",
        )
        .env("LEASE_BROKER", broker.endpoint())
        .start();
    running.lines.expect("ready");
    let (token, nested) = (token_in(&sandbox, "token"), token_in(&sandbox, "nested"));
    assert_eq!(reason_of(&sandbox, &broker, &token), "granted");
    assert_eq!(reason_of(&sandbox, &broker, &nested), "granted");
    kill_and_see_owner_gone_within_a_second(&sandbox, &broker, &mut running, &token);
    assert_eq!(reason_of(&sandbox, &broker, &nested), "parent owner gone");
}

/// Kills the wrapper of a run held by `broker` with SIGKILL and asserts that its token, granted
/// until then, is denied as `owner gone` within a second.
fn kill_and_see_owner_gone_within_a_second(
    sandbox: &Sandbox,
    broker: &Broker,
    running: &mut crate::harness::Running,
    token: &str,
) {
    let _timing = crate::harness::timing();
    running.signal(Signal::SIGKILL);
    let killed = Instant::now();
    let _ = running.wait();
    loop {
        let reason = reason_of(sandbox, broker, token);
        if reason == "owner gone" {
            break;
        }
        assert_eq!(reason, "granted");
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "still granted a second after kill -9"
        );
    }
}

/// A run through `endpoint` whose command writes its token to `token`, says `ready`, waits for
/// the file `go`, then runs `then`.
fn waiting_run(sandbox: &Sandbox, endpoint: &str, then: &str) -> crate::harness::Running {
    let mut running = sandbox
        .run_sh(
            "a:b",
            &format!(
                "printf %s \"$LEASE_TOKEN\" > token; echo ready; while [ ! -e go ]; do sleep 0.02; done; {then}"
            ),
        )
        .env("LEASE_BROKER", endpoint)
        .start();
    running.lines.expect("ready");
    running
}

/// A broker restart in the middle of a run: the run comes back to the new broker and keeps
/// its lease.
#[test]
fn a_broker_restart_keeps_the_runs_lease() {
    let sandbox = Sandbox::new();
    // The run re-attaches within owner_timeout of losing its broker: room for a broker to
    // start on a loaded machine (on etcd, with its session to open).
    sandbox.write_config("owner_timeout = 6\n");
    let broker = Broker::start(&sandbox, &[]);
    let mut running = waiting_run(
        &sandbox,
        &broker.endpoint(),
        "lease verify a:b && echo still-granted",
    );
    let token = token_in(&sandbox, "token");
    let (status, _) = broker.stop();
    assert_eq!(status.code(), Some(0));
    let mut broker = Broker::start(&sandbox, &[]);
    broker.expect_log("run re-attached");
    assert_eq!(reason_of(&sandbox, &broker, &token), "granted");
    fs::write(sandbox.path("go"), "").expect("go");
    running.lines.expect("still-granted");
    assert_eq!(running.wait().code(), Some(0));
    assert_eq!(reason_of(&sandbox, &broker, &token), "revoked");
}

/// A broker SIGKILLed while a run ends: the run cannot tell it, says so and exits with the
/// command's status; the restarted broker grants that token nothing.
#[test]
fn a_run_that_ended_while_its_broker_was_dead_stays_dead() {
    let sandbox = Sandbox::new();
    sandbox.write_config("owner_timeout = 2\n");
    let broker = Broker::start(&sandbox, &[]);
    let mut running = waiting_run(&sandbox, &broker.endpoint(), "exit 5");
    let token = token_in(&sandbox, "token");
    kill_pid(broker.pid());
    drop(broker);
    fs::write(sandbox.path("go"), "").expect("go");
    assert_eq!(running.wait().code(), Some(5));
    let broker = Broker::start(&sandbox, &[]);
    if crate::harness::shared_store_mode() {
        // On a store shared by brokers (maybe on other hosts), the dead broker's runs are
        // owner gone once its session expires: within owner_timeout of its death.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while reason_of(&sandbox, &broker, &token) != "owner gone" {
            assert!(std::time::Instant::now() < deadline, "still not owner gone");
            std::thread::sleep(Duration::from_millis(100));
        }
        return;
    }
    assert_eq!(reason_of(&sandbox, &broker, &token), "owner gone");
}

/// `socket_group` on a socket in a directory the group cannot pass (the default, in the 0700
/// state dir) would reach no one: the broker says so at start, naming the directory.
#[test]
fn a_socket_group_that_cannot_reach_the_socket_is_warned_of() {
    let sandbox = Sandbox::new();
    sandbox.write_config("socket_group = \"nogroup\"\n");
    let closed = sandbox.path("closed");
    fs::create_dir(&closed).expect("dir");
    fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).expect("chmod");
    let broker = Broker::start_at(&sandbox, closed.join("broker.sock"), &[]);
    let (_, log) = broker.stop();
    let warning = format!(
        "lease serve: warning: socket_group cannot reach {}: {} (mode 700) keeps the group out",
        closed.join("broker.sock").display(),
        closed.display()
    );
    assert!(log.iter().any(|l| l.starts_with(&warning)), "{log:?}");
    // Directories it can pass (the sandbox opened to others' search, as /tmp and / are): no
    // warning.
    fs::set_permissions(sandbox.path(""), fs::Permissions::from_mode(0o711)).expect("chmod");
    let open = sandbox.path("open");
    fs::create_dir(&open).expect("dir");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).expect("chmod");
    let broker = Broker::start_at(&sandbox, open.join("broker.sock"), &[]);
    let (_, log) = broker.stop();
    assert!(
        !log.iter().any(|l| l.contains("warning: socket_group")),
        "{log:?}"
    );
}

/// A broker that hangs (stopped) as a run ends: the wrapper tries to tell it for
/// `owner_timeout` and no longer (each step bounded by what is left), then exits with the
/// command's status; the broker, once it goes on, ends the lease.
#[test]
fn a_run_whose_broker_hangs_as_it_ends_waits_at_most_owner_timeout() {
    let sandbox = Sandbox::new();
    sandbox.write_config("owner_timeout = 2\n");
    let broker = Broker::start(&sandbox, &[]);
    let mut running = waiting_run(&sandbox, &broker.endpoint(), "exit 7");
    let token = token_in(&sandbox, "token");
    broker.signal(Signal::SIGSTOP);
    let ended = Instant::now();
    fs::write(sandbox.path("go"), "").expect("go");
    assert_eq!(running.wait().code(), Some(7));
    let took = ended.elapsed();
    broker.signal(Signal::SIGCONT);
    // owner_timeout (2 s) and the command's own end; a wait of owner_timeout for each step
    // of telling the broker (connect, write, read) would be 6 s.
    assert!(
        took < Duration::from_millis(4500),
        "the wrapper waited {took:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let reason = loop {
        let reason = reason_of(&sandbox, &broker, &token);
        if reason != "granted" {
            break reason;
        }
        assert!(Instant::now() < deadline, "still granted");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Ended, not merely unreachable: the broker answered for the lease.
    assert!(matches!(&*reason, "revoked" | "owner gone"), "{reason}");
}

/// A masked run whose output no one reads yet (a stopped terminal, a slow pipe): its command
/// ends, the output waits in lease, and the lease ends all the same; the output then comes
/// through whole once it is read.
#[test]
fn a_masked_run_whose_output_waits_loses_its_lease_when_its_command_ends() {
    use std::io::Read as _;
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let mut run = sandbox
        .lease(["run", "--mask", "--scope", "a:b", "--", "sh", "-c"])
        .arg("printf %s \"$LEASE_TOKEN\" > token; head -c 100000 /dev/zero; touch done")
        .env("LEASE_BROKER", broker.endpoint());
    run.command.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = run.command.spawn().expect("lease");
    let deadline = Instant::now() + crate::harness::PATIENCE;
    while !sandbox.path("done").exists() {
        assert!(Instant::now() < deadline, "the command never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
    let token = token_in(&sandbox, "token");
    let deadline = Instant::now() + Duration::from_secs(5);
    let reason = loop {
        let reason = reason_of(&sandbox, &broker, &token);
        if reason != "granted" {
            break reason;
        }
        assert!(
            Instant::now() < deadline,
            "still granted while the output waits for a reader"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(matches!(&*reason, "revoked" | "owner gone"), "{reason}");
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("read");
    assert_eq!(out.len(), 100_000);
    assert!(wait_for_exit(&mut child).success());
}

/// 200 runs at once through one broker: every one granted inside, every lease revoked after.
#[test]
fn two_hundred_concurrent_runs_through_one_broker_lose_nothing() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let _load = crate::harness::loading();
    let out = sandbox
        .sh(
            // Each pid as it starts: `$(jobs -p)` runs in a subshell, which in dash lists none.
            "i=0; pids=; while [ $i -lt 200 ]; do lease run --scope a:b -- lease verify a:b & pids=\"$pids $!\"; i=$((i + 1)); done; \
             waited=0; fails=0; for pid in $pids; do waited=$((waited + 1)); wait $pid || fails=$((fails + 1)); done; \
             echo \"waited: $waited failed: $fails\"",
        )
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success();
    assert_eq!(out.stdout, "waited: 200 failed: 0\n", "{out:?}");
    // A verify denied inside would have said so here.
    assert_eq!(out.stderr, "", "{out:?}");
    let states = sandbox.states();
    assert_eq!(states.len(), 200);
    assert!(states.iter().all(|s| *s == "revoked"), "{states:?}");
}

/// The agent runs as another uid than the broker (root starts the run, `setpriv` drops the
/// command to nobody): it cannot read or write the store, cannot mint a root lease, its
/// `LEASE_CONFIG` and `--state-dir` change nothing, it can mint a narrower nested lease whose
/// token verifies over TCP from outside the run, and a lease it mints in a store of its own is
/// worth nothing to the broker.
#[test]
fn an_agent_under_another_uid_cannot_reach_past_the_broker() {
    use std::os::unix::fs::PermissionsExt as _;
    if !nix::unistd::geteuid().is_root() {
        crate::harness::skip("not-root", "only root can run the command as another uid");
        return;
    }
    let sandbox = Sandbox::new();
    open_to_other_uids(&sandbox);
    // ... and run lease from bin/.
    fs::create_dir(sandbox.path("bin")).expect("bin");
    fs::set_permissions(sandbox.path("bin"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::copy(crate::harness::lease_bin(), sandbox.path("bin/lease")).expect("copy lease");
    sandbox.write_config("socket_group = \"nogroup\"\nmax_ttl = \"1h\"\n");
    let broker = Broker::start_at(&sandbox, sandbox.path("sock/broker.sock"), &[]);
    let mode = fs::metadata(&broker.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    sandbox.issue("read:articles"); // something in the store to try to read
    let script = r#"
export LEASE_CONFIG=/dev/null
echo "uid $(id -u)"
cat "$STORE"/leases/* >/dev/null 2>&1 && echo store-readable || echo store-unreadable
touch "$STORE"/leases/forged.toml 2>/dev/null && echo store-writable || echo store-unwritable
env -u LEASE_TOKEN lease issue --scope read:articles 2>&1
lease --state-dir "$OUT/elsewhere" issue --scope read:articles --ttl 5h 2>&1
lease issue --scope read:articles > "$OUT/nested" && echo nested-minted
lease issue --scope admin:all 2>&1
env -u LEASE_BROKER lease --state-dir "$OUT/own" issue --scope 'admin:*' > "$OUT/own-token" && echo own-minted
echo waiting
while [ ! -e "$OUT/go" ]; do sleep 0.02; done
"#;
    let mut running = sandbox
        .lease(["run", "--scope", "read:articles,write:draft", "--"])
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env("LEASE_BROKER", broker.endpoint())
        .env("STORE", sandbox.state_dir())
        .env("OUT", sandbox.path("out"))
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", sandbox.path("bin").display()),
        )
        .start();
    running.lines.expect("waiting");
    let out = running.lines.seen().join("\n");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "uid 65534", "{out:?}");
    assert_eq!(lines[1], "store-unreadable", "{out:?}");
    assert_eq!(lines[2], "store-unwritable", "{out:?}");
    assert!(
        lines[3].starts_with("lease: not allowed: minting a root lease needs an operator"),
        "{out:?}"
    );
    assert!(lines[4].contains("max_ttl"), "{out:?}");
    assert_eq!(lines[5], "nested-minted", "{out:?}");
    assert!(lines[6].contains("admin:all"), "{out:?}");
    assert_eq!(lines[7], "own-minted", "{out:?}");
    assert!(!sandbox.path("out/elsewhere").exists());
    // From outside the run, over TCP: the nested lease is the broker's, the self-made one is
    // unknown to it.
    let over_tcp = |token: &str| {
        let url = format!("http://{}/v1/verify", broker.tcp);
        let reply = curl(
            &sandbox,
            &bearer(token),
            &["--data", "{\"action\":\"read:articles\"}", &url],
        );
        reply.status
    };
    let nested = fs::read_to_string(sandbox.path("out/nested")).expect("nested");
    let own = fs::read_to_string(sandbox.path("out/own-token")).expect("own");
    assert_eq!(over_tcp(nested.trim()), 200);
    assert_eq!(over_tcp(own.trim()), 401);
    fs::write(sandbox.path("out/go"), "").expect("go");
    assert_eq!(running.wait().code(), Some(0));
    // The run has ended, and its nested lease with it.
    assert_eq!(over_tcp(nested.trim()), 403);
}

/// `status`, `list`, `log` and `suggest` through the broker print exactly what they print
/// locally, byte for byte, and exit the same; the broker decides who may ask for what.
#[test]
fn reading_subcommands_through_the_broker_print_what_they_print_locally() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let parent = sandbox.issue("read:articles,write:draft=2");
    let nested = sandbox
        .lease(["issue", "--scope", "read:articles"])
        .env("LEASE_TOKEN", &parent)
        .run()
        .success()
        .stdout
        .trim()
        .to_owned();
    sandbox.verify(&nested, "read:articles").success();
    sandbox.verify(&nested, "write:draft").code_is(1);
    let nested_id = sandbox
        .lease(["status", "--json"])
        .env("LEASE_TOKEN", &nested)
        .run()
        .success()
        .json()["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let cases: Vec<(Vec<&str>, Option<&str>)> = vec![
        (vec!["status"], Some(&nested)),
        (vec!["status", "--json"], Some(&parent)),
        (vec!["status"], Some("agt_not-a-token")),
        (vec!["status"], None),
        (vec!["list", "--all", "--json"], None),
        (vec!["log"], None),
        (vec!["log", "--json", "--id", &nested_id], None),
        (vec!["suggest", &nested_id], None),
        (vec!["suggest", "--json", &nested_id], None),
        (vec!["suggest", "0123456789ab"], None),
    ];
    // The time left may tick over a second between the two runs: that alone may differ.
    let left = regex::Regex::new(r#""seconds_left":\d+|\(in [0-9hms ]+\)"#).expect("regex");
    for (args, token) in cases {
        let run = |through: bool| {
            let mut cmd = sandbox.lease(&args);
            cmd = match token {
                Some(token) => cmd.env("LEASE_TOKEN", token),
                None => cmd.env_remove("LEASE_TOKEN"),
            };
            if through {
                cmd = cmd.env("LEASE_BROKER", broker.endpoint());
            }
            cmd.run()
        };
        let (local, remote) = (run(false), run(true));
        let same = |text: &str| left.replace_all(text, "[LEFT]").into_owned();
        assert_eq!(
            (local.code(), same(&local.stdout), &local.stderr),
            (remote.code(), same(&remote.stdout), &remote.stderr),
            "lease {args:?}"
        );
    }
}

/// `renew`, `revoke --self`, `revoke ID`, `revoke --all` and `gc` through the broker: a token
/// holder may renew and revoke its own lease; the rest is for operators (over TCP, nobody).
#[test]
fn changing_subcommands_through_the_broker_follow_who_may_do_what() {
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let tcp = format!("http://{}", broker.tcp);
    let token = sandbox.issue("read:articles");
    let through = |endpoint: &str, args: &[&str]| {
        sandbox
            .lease(args)
            .env("LEASE_BROKER", endpoint)
            .env("LEASE_TOKEN", &token)
            .run()
    };
    // A token holder over TCP: renew and status of its own lease.
    let renewed = through(&tcp, &["renew", "--ttl", "10m"]).success();
    assert!(renewed.stdout.ends_with("Z\n"), "{renewed:?}");
    through(&tcp, &["status"]).success();
    // The leases nested in its own, by id: their trail, and revoking one alone.
    let nested = through(&tcp, &["issue", "--scope", "read:articles", "--json"])
        .success()
        .json();
    let (nested_id, nested_token) = (
        nested["id"].as_str().expect("id"),
        nested["token"].as_str().expect("token"),
    );
    let trail = through(&tcp, &["log", "--id", nested_id, "--json"]).success();
    assert!(trail.stdout.contains(nested_id), "{trail:?}");
    through(&tcp, &["revoke", nested_id]).success();
    let nested_after = sandbox
        .lease(["verify", "read:articles"])
        .env("LEASE_BROKER", &tcp)
        .env("LEASE_TOKEN", nested_token)
        .run()
        .code_is(1);
    assert!(
        nested_after.stderr.starts_with("lease: denied: revoked: "),
        "{nested_after:?}"
    );
    through(&tcp, &["status"]).success();
    // Not for a token holder: every lease, and any lease outside its own (a root of its own,
    // an id no lease has) by id.
    let stranger = sandbox.issue_json("read:articles", &[]);
    let stranger = stranger["id"].as_str().expect("id");
    for args in [
        &["list"][..],
        &["revoke", "--all"],
        &["gc"],
        &["revoke", "0123456789ab"],
        &["revoke", stranger],
        &["revoke", nested_id, stranger],
        &["log", "--id", "0123456789ab"],
        &["log", "--id", stranger],
        &["suggest", stranger],
        // Not an id at all: no lease of its own either.
        &["log", "--id", "zzz"],
        &["revoke", "zzz"],
        &["suggest", "DFD1118EE83A"],
    ] {
        let out = through(&tcp, args)
            .code_is(2)
            .one_error_line()
            .lacks_token(&token);
        assert!(
            out.stderr.starts_with("lease: not allowed: "),
            "{args:?}: {out:?}"
        );
    }
    // Its own trail, yes: its lease's events and those of the leases nested in it, and no
    // stranger's.
    let own = through(&tcp, &["log", "--json"]).success();
    let leases: Vec<serde_json::Value> = own
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("an event")["lease"].clone())
        .collect();
    assert!(leases.contains(&nested["id"]), "{own:?}");
    assert!(leases.iter().any(|l| *l != nested["id"]), "{own:?}");
    assert!(!leases.contains(&serde_json::json!(stranger)), "{own:?}");
    // revoke --self, then the lease is gone for everyone.
    through(&tcp, &["revoke", "--self"]).success();
    let after = through(&tcp, &["verify", "read:articles"]).code_is(1);
    assert!(
        after.stderr.starts_with("lease: denied: revoked: "),
        "{after:?}"
    );
    // An operator on the socket: revoke by id, revoke --all, gc.
    let other = sandbox.issue_json("a:b", &[]);
    let id = other["id"].as_str().expect("id");
    through(&broker.endpoint(), &["revoke", id]).success();
    through(&broker.endpoint(), &["revoke", "0123456789ab"]).code_is(1);
    sandbox.issue("c:d");
    through(&broker.endpoint(), &["revoke", "--all"]).success();
    let gc = through(&broker.endpoint(), &["gc"]).success();
    assert_eq!(gc.stdout, "removed 0 leases\n");
    let listed = through(&broker.endpoint(), &["list", "--all", "--json"])
        .success()
        .json();
    assert!(
        listed
            .as_array()
            .expect("array")
            .iter()
            .all(|l| l["state"] == "revoked"),
        "{listed}"
    );
}

/// A test CA, and a certificate it signed for 127.0.0.1 with its key, made by openssl in the
/// sandbox: (CA certificate, broker certificate, broker key).
pub fn certificates(sandbox: &Sandbox) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| sandbox.path(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(sandbox.path(""))
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-days", "1", "-subj", "/CN=lease test CA"],
            &["-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-subj", "/CN=127.0.0.1"],
            &["-keyout", "broker.key", "-out", "broker.csr"],
        ]
        .concat(),
    );
    fs::write(
        path("broker.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "broker.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "broker.ext",
        "-out",
        "broker.crt",
    ]);
    (path("ca.crt"), path("broker.crt"), path("broker.key"))
}

/// A PEM file that is a device, a FIFO or a directory (`tls_cert`, `tls_key`, an upstream's
/// `ca_file`, `LEASE_BROKER_CA`) is refused at once in one line naming it: never read without
/// end (`/dev/zero`) or waited on (a FIFO no one writes).
#[test]
fn a_pem_file_that_is_not_a_regular_file_is_refused_at_once() {
    let sandbox = Sandbox::new();
    let fifo = sandbox.path("fifo.pem");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let fifo = fifo.display().to_string();
    let dir = sandbox.path("").display().to_string();
    for (config, named) in [
        (
            format!("tls_cert = \"/dev/zero\"\ntls_key = \"{fifo}\"\n"),
            "tls_cert /dev/zero",
        ),
        (
            format!("tls_cert = \"{fifo}\"\ntls_key = \"/dev/zero\"\n"),
            "tls_cert ",
        ),
        (
            format!(
                "[upstream.api]\nurl = \"https://127.0.0.1:1\"\nsecret_env = \"HOME\"\nca_file = \"{dir}\"\n"
            ),
            "ca_file ",
        ),
    ] {
        std::fs::write(sandbox.path("serve.toml"), &config).expect("config");
        let started = Instant::now();
        let out = sandbox
            .lease([
                "--config",
                sandbox.path("serve.toml").to_str().unwrap(),
                "serve",
                "--listen",
                "127.0.0.1:0",
            ])
            .run();
        assert_ne!(out.code(), Some(0), "{out:?}");
        let out = out.one_error_line();
        assert!(
            out.stderr.contains(named) && out.stderr.contains("it is not a regular file"),
            "{config}: {out:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{config}");
    }
    // A client whose LEASE_BROKER_CA is /dev/zero or a FIFO gives up at once (exit 2).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let https = format!("https://{}", listener.local_addr().expect("address"));
    let token = sandbox.issue("read:a");
    for ca in ["/dev/zero", fifo.as_str()] {
        let started = Instant::now();
        let out = sandbox
            .lease(["verify", "read:a"])
            .env("LEASE_TOKEN", &token)
            .env("LEASE_BROKER", &https)
            .env("LEASE_BROKER_CA", ca)
            .run()
            .code_is(2)
            .one_error_line();
        assert!(out.stderr.contains("it is not a regular file"), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(4), "{ca}");
    }
    // The relay's word on it reaches the client whole, on one line, whatever the path holds.
    let out = sandbox
        .lease(["verify", "read:a"])
        .env("LEASE_TOKEN", &token)
        .env("LEASE_BROKER", &https)
        .env("LEASE_BROKER_CA", "/nonexistent/ca\nfile.pem")
        .run()
        .code_is(2)
        .one_error_line();
    assert!(
        out.stderr
            .contains(r"/nonexistent/ca\nfile.pem: No such file or directory"),
        "{out:?}"
    );
}

/// A private key others may read (`tls_key`) stops the broker at start, in one line naming
/// the file and the fix.
#[test]
fn a_private_key_others_may_read_stops_the_broker() {
    use std::os::unix::fs::PermissionsExt;
    let sandbox = Sandbox::new();
    let key = sandbox.path("open.key");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n",
    )
    .expect("key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("mode");
    let config = sandbox.path("serve.toml");
    std::fs::write(
        &config,
        format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            key.display(),
            key.display()
        ),
    )
    .expect("config");
    let out = sandbox
        .lease(["serve", "--listen", "127.0.0.1:0"])
        .env("LEASE_CONFIG", &config)
        .run()
        .code_is(2)
        .one_error_line();
    let shown = key.display();
    assert!(
        out.stderr.ends_with(&format!(
            "tls_key {shown}: it holds a private key and is open to others or writable by its group (mode 644): chmod 600 {shown}\n"
        )),
        "{out:?}"
    );
}

/// TLS on the broker's TCP listeners (`tls_cert`, `tls_key`): an `https://` broker serves
/// verify and runs to a client that trusts its certificate (`LEASE_BROKER_CA`), refuses one
/// that does not (exit 2, nothing granted), and may then listen off loopback without
/// `--insecure-http`.
#[test]
fn an_https_broker_serves_clients_that_trust_its_certificate() {
    if Command::new("openssl").arg("version").output().is_err() {
        crate::harness::skip("no-openssl", "openssl is not installed");
        return;
    }
    let sandbox = Sandbox::new();
    let (ca, cert, key) = certificates(&sandbox);
    sandbox.write_config(&format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    ));
    let mut broker = Broker::start(&sandbox, &[]);
    let https = format!("https://{}", broker.tcp);
    let token = sandbox.issue("read:articles");
    let client = |ca: Option<&Path>| {
        let cmd = sandbox
            .lease(["verify", "read:articles"])
            .env("LEASE_TOKEN", &token)
            .env("LEASE_BROKER", &https);
        match ca {
            Some(ca) => cmd.env("LEASE_BROKER_CA", ca),
            None => cmd.env("LEASE_BROKER_CA", sandbox.path("no-such-ca.pem")),
        }
    };
    client(Some(&ca)).run().success();
    let out = client(None)
        .run()
        .code_is(2)
        .one_error_line()
        .lacks_token(&token);
    assert!(out.stderr.contains(&format!("broker {https}: ")), "{out:?}");
    // A CA that did not sign it: the handshake fails, nothing is granted.
    let other_sandbox = Sandbox::new();
    let (other_ca, other_cert, other_key) = certificates(&other_sandbox);
    let other = sandbox.path("other-ca.pem");
    fs::copy(&other_ca, &other).expect("copy");
    let out = client(Some(&other)).run().code_is(2).one_error_line();
    assert!(out.stderr.contains("TLS handshake"), "{out:?}");
    // (Its CA has the same name as the one that signed the broker's: rustls says the signature
    // is bad, which is also what it says of a server without the certificate's key: no advice
    // to trust another CA then.)
    assert!(!out.stderr.contains("LEASE_BROKER_CA"), "{out:?}");
    // Without LEASE_BROKER_CA: the system's CAs, which never signed a test CA's; the line says
    // which CAs were trusted, and the fix.
    let system = "/etc/ssl/certs/ca-certificates.crt";
    if Path::new(system).exists() {
        let out = sandbox
            .lease(["verify", "read:articles"])
            .env("LEASE_TOKEN", &token)
            .env("LEASE_BROKER", &https)
            .env_remove("LEASE_BROKER_CA")
            .run()
            .code_is(2)
            .one_error_line();
        assert!(
            out.stderr.contains(&format!(
                "no CA in {system} signed the broker's certificate (or the broker does not send its intermediate certificates); set LEASE_BROKER_CA to the PEM file of the CA that did"
            )),
            "{out:?}"
        );
    }
    // A run through the https broker (over TCP, nested in a lease: nobody is an operator
    // there), its verify included.
    let out = sandbox
        .run_sh(
            "read:articles",
            "lease verify read:articles && echo granted",
        )
        .env("LEASE_TOKEN", &token)
        .env("LEASE_BROKER", &https)
        .env("LEASE_BROKER_CA", &ca)
        .run()
        .success();
    assert_eq!(out.stdout, "granted\n");
    // curl trusts it with the same CA; plain HTTP to the TLS port gets nothing.
    let url = format!("{https}/healthz");
    let cacert = ca.display().to_string();
    let reply = curl(&sandbox, &[], &["--cacert", &cacert, &url]);
    assert_eq!(reply.status, 200);
    let plain = sandbox
        .command("curl")
        .args(["-s", "--max-time", "5"])
        .arg(format!("http://{}/healthz", broker.tcp))
        .run();
    assert!(!plain.stdout.contains("ok"), "{plain:?}");
    // SIGHUP reads the certificate and key again: a renewed certificate (here one from the
    // other CA) serves the next connections, with no restart.
    fs::copy(&other_cert, &cert).expect("renew the certificate");
    fs::copy(&other_key, &key).expect("renew the key");
    broker.signal(Signal::SIGHUP);
    broker.expect_log("reloaded the config");
    client(Some(&other)).run().success();
    let out = client(Some(&ca)).run().code_is(2).one_error_line();
    assert!(out.stderr.contains("TLS handshake"), "{out:?}");
    let (status, log) = broker.stop();
    assert_eq!(status.code(), Some(0));
    assert!(!log.join("\n").contains(&token));
    // With TLS, an address off loopback needs no --insecure-http.
    serves_then_stops(
        &sandbox,
        &["--listen", "0.0.0.0:0"],
        "(https)",
        Signal::SIGTERM,
    );
}

/// A run whose connection goes silent (its wrapper stopped, as a lost network would leave it):
/// after `owner_timeout` without a keepalive, the broker ends the lease as `owner gone`.
#[test]
fn a_silent_run_loses_its_lease_after_owner_timeout() {
    let sandbox = Sandbox::new();
    sandbox.write_config("owner_timeout = 1\n");
    let mut broker = Broker::start(&sandbox, &[]);
    let mut running = waiting_run(&sandbox, &broker.endpoint(), "exit 0");
    let token = token_in(&sandbox, "token");
    assert_eq!(reason_of(&sandbox, &broker, &token), "granted");
    running.signal(Signal::SIGSTOP);
    let stopped = Instant::now();
    broker.expect_log("run went silent");
    let after = stopped.elapsed();
    // Not before owner_timeout has passed since the last keepalive, which the wrapper sends
    // every third of it (so at least two thirds of it after the stop), and not long after.
    assert!(
        after >= Duration::from_millis(600) && after < Duration::from_secs(5),
        "{after:?}"
    );
    assert_eq!(reason_of(&sandbox, &broker, &token), "owner gone");
    running.signal(Signal::SIGCONT);
    // The wrapper, back, tries to re-attach and is told the lease is over.
    broker.expect_log("has ended");
    fs::write(sandbox.path("go"), "").expect("go");
    assert_eq!(running.wait().code(), Some(0), "the command's status");
    assert_eq!(reason_of(&sandbox, &broker, &token), "owner gone");
    // It said so, once.
    let mut stderr = String::new();
    std::io::Read::read_to_string(
        &mut running.child.stderr.take().expect("stderr"),
        &mut stderr,
    )
    .expect("stderr");
    assert_eq!(
        stderr
            .matches("ended this run's lease while its connection was lost")
            .count(),
        1,
        "{stderr}"
    );
}

/// The command holds its run's token, not its wrapper's hold secret: it cannot re-attach the
/// run to a connection of its own (which would keep the lease alive after its wrapper is
/// killed, and let it report a forged end).
#[test]
fn a_command_cannot_take_its_own_run_over() {
    use std::io::{BufRead, BufReader};
    let sandbox = Sandbox::new();
    let broker = Broker::start(&sandbox, &[]);
    let mut running = waiting_run(&sandbox, &broker.endpoint(), "exit 0");
    let token = token_in(&sandbox, "token");
    let attach = |secret: Option<&str>| {
        let mut stream = std::os::unix::net::UnixStream::connect(&broker.socket).expect("connect");
        stream
            .set_read_timeout(Some(crate::harness::PATIENCE))
            .expect("timeout");
        let mut head = format!(
            "POST /v1/runs/attach HTTP/1.1\r\nHost: lease\r\nConnection: Upgrade\r\nUpgrade: lease-run\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n"
        );
        if let Some(secret) = secret {
            head.push_str(&format!("X-Lease-Hold: {secret}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("send");
        let mut reader = BufReader::new(stream);
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).expect("read") == 0 {
                break;
            }
            let done = line.starts_with('{') || line.starts_with('"');
            lines.push(line);
            if done {
                break;
            }
        }
        lines.join("")
    };
    let answer = attach(None);
    assert!(
        answer.contains(
            r#"{"error":"not allowed: no hold secret: only the run's wrapper may re-attach it"#
        ),
        "{answer}"
    );
    let forged = format!("agt_{}", "A".repeat(48));
    let answer = attach(Some(&forged));
    assert!(
        answer.contains("re-attached only by its run's wrapper"),
        "{answer}"
    );
    // The wrapper still holds the run: killing it ends the lease at once.
    kill_and_see_owner_gone_within_a_second(&sandbox, &broker, &mut running, &token);
}

/// The example socket unit's sockets, passed by `systemd-socket-activate` as systemd passes
/// them: the broker takes them (a unix socket and a TCP port), serves on both, binds nothing
/// of its own, and leaves the socket file, systemd's, when it stops.
#[test]
fn the_broker_takes_its_sockets_from_socket_activation() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        crate::harness::skip(
            "no-systemd-socket-activate",
            "systemd-socket-activate is not installed",
        );
        return;
    }
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lease-broker.socket"),
    )
    .expect("socket unit");
    assert!(
        unit.contains("ListenStream=/run/lease/broker.sock"),
        "{unit}"
    );
    assert!(unit.contains("SocketMode=0600"), "{unit}");
    let sandbox = Sandbox::new();
    let token = sandbox.issue("read:articles");
    let socket = sandbox.path("activated.sock");
    let port = free_port();
    // `lease serve` under systemd-socket-activate with `sockets` (its arguments before the
    // program), and the tool's log, which the broker's stderr joins.
    let activate = |config: &std::ffi::OsStr, sockets: &[&std::ffi::OsStr]| {
        let mut command = sandbox.command("systemd-socket-activate").command;
        command
            .args(sockets)
            .arg(crate::harness::lease_bin())
            // systemd-socket-activate passes no environment on, as systemd passes only the
            // unit's.
            .arg("--state-dir")
            .arg(sandbox.state_dir())
            .arg("--config")
            .arg(config)
            .arg("serve")
            .args(
                sandbox
                    .store_url()
                    .map(|url| ["--store", url])
                    .into_iter()
                    .flatten(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("systemd-socket-activate");
        let log = Lines::from(child.stderr.take().expect("stderr"));
        (child, log)
    };
    let tcp = format!("127.0.0.1:{port}");
    let (mut child, mut log) = activate(
        "/dev/null".as_ref(),
        &[
            "-l".as_ref(),
            socket.as_os_str(),
            "-l".as_ref(),
            tcp.as_ref(),
        ],
    );
    log.expect("Listening on 127.0.0.1");
    // The first connection starts the broker; the request waits in the socket's queue.
    sandbox
        .lease(["verify", "read:articles"])
        .env("LEASE_TOKEN", &token)
        .env("LEASE_BROKER", format!("unix:{}", socket.display()))
        .run()
        .success();
    log.expect("(from systemd)");
    let reply = curl(
        &sandbox,
        &bearer(&token),
        &[
            "-X",
            "POST",
            "--data",
            r#"{"action":"read:articles"}"#,
            &format!("http://127.0.0.1:{port}/v1/verify"),
        ],
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        !sandbox.state_dir().join("broker.sock").exists(),
        "the broker bound a socket of its own"
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("stop");
    assert_eq!(wait_for_exit(&mut child).code(), Some(0));
    assert!(socket.exists(), "the broker removed systemd's socket");
    // Accept=yes passes a connection, not a listening socket: the broker says so and stops,
    // instead of failing every accept.
    let connected = sandbox.path("accept.sock");
    let (mut child, mut log) = activate(
        "/dev/null".as_ref(),
        &["--accept".as_ref(), "-l".as_ref(), connected.as_os_str()],
    );
    log.expect("Listening on");
    sandbox
        .lease(["verify", "read:articles"])
        .env("LEASE_TOKEN", &token)
        .env("LEASE_BROKER", format!("unix:{}", connected.display()))
        .run()
        .code_is(2);
    let line = log.expect("socket activation");
    assert!(
        line.contains("descriptor 3 is not a listening stream socket"),
        "{line}"
    );
    let _ = child.kill();
    let _ = child.wait();
    // socket_group does not apply to systemd's socket (its owner and mode are the unit's):
    // the broker says so rather than leave the group out without a word.
    let config = sandbox.path("grouped.toml");
    fs::write(&config, "socket_group = \"nogroup\"\n").expect("config");
    let grouped = sandbox.path("grouped.sock");
    let (mut child, mut log) = activate(config.as_os_str(), &["-l".as_ref(), grouped.as_os_str()]);
    log.expect("Listening on");
    sandbox
        .lease(["verify", "read:articles"])
        .env("LEASE_TOKEN", &token)
        .env("LEASE_BROKER", format!("unix:{}", grouped.display()))
        .run()
        .success();
    log.expect(
        "warning: socket_group does not apply to the sockets systemd passes: set SocketGroup= and SocketMode=0660 in the .socket unit",
    );
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, Signal::SIGTERM).expect("stop");
    assert_eq!(wait_for_exit(&mut child).code(), Some(0));
}

/// A renewed certificate in the same files: SIGHUP serves it to the next connection. TLS
/// cannot be turned off by a reload (the listeners were bound under its rule).
#[test]
fn a_reload_serves_a_renewed_certificate() {
    if Command::new("openssl").arg("version").output().is_err() {
        crate::harness::skip("no-openssl", "openssl is not installed");
        return;
    }
    let sandbox = Sandbox::new();
    let (old_ca, cert, key) = certificates(&sandbox);
    let config = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.display(),
        key.display()
    );
    sandbox.write_config(&config);
    let mut broker = Broker::start(&sandbox, &[]);
    let https = format!("https://{}", broker.tcp);
    let token = sandbox.issue("read:articles");
    let verify = |ca: &Path| {
        sandbox
            .lease(["verify", "read:articles"])
            .env("LEASE_TOKEN", &token)
            .env("LEASE_BROKER", &https)
            .env("LEASE_BROKER_CA", ca)
            .run()
    };
    verify(&old_ca).success();
    // Renewed: another CA's certificate and key, written over the same files.
    let other = Sandbox::new();
    let (new_ca, new_cert, new_key) = certificates(&other);
    let new_ca_here = sandbox.path("new-ca.pem");
    fs::copy(&new_ca, &new_ca_here).expect("ca");
    fs::copy(&new_cert, &cert).expect("cert");
    fs::copy(&new_key, &key).expect("key");
    broker.signal(Signal::SIGHUP);
    broker.expect_log("reloaded the config");
    verify(&new_ca_here).success();
    let out = verify(&old_ca).code_is(2).one_error_line();
    assert!(out.stderr.contains("TLS handshake"), "{out:?}");
    // Without TLS the listener would carry tokens in clear: the reload is refused.
    let path = sandbox.path("config/lease/config.toml");
    fs::write(&path, "").expect("config");
    broker.signal(Signal::SIGHUP);
    let line = broker.expect_log("reload failed");
    assert!(
        line.contains("tls_cert and tls_key can be changed by a reload, not added or removed"),
        "{line}"
    );
    verify(&new_ca_here).success();
}
