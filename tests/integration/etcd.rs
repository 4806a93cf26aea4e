//! Brokers sharing one store on a real etcd cluster (the Debian package `etcd-server`), started
//! on loopback ports by each test: a token minted on one broker is checked on another, a
//! revocation or a budget holds across them, and losing quorum fails every decision closed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{Broker, free_port, reason_of};
use crate::harness::{Running, Sandbox, kill_pid, skip};

/// One member of a cluster: how to start it again, and the process while it runs.
struct Member {
    name: String,
    client: u16,
    args: Vec<String>,
    child: Option<Child>,
}

/// A real etcd cluster on loopback ports, each member's data in the sandbox; stopped on drop.
pub struct Cluster {
    members: Vec<Member>,
}

impl Cluster {
    /// Starts `size` members and waits until the cluster has a leader. `None` (the test is
    /// skipped, or fails in CI) when etcd is not installed.
    pub fn start(sandbox: &Sandbox, size: usize) -> Option<Cluster> {
        if first_pass_only() {
            return None;
        }
        if Command::new("etcd").arg("--version").output().is_err() {
            skip(
                "etcd",
                "etcd is not installed (apt-get install etcd-server)",
            );
            return None;
        }
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = format!("lease-test-{}", std::process::id());
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let data: PathBuf = sandbox.path(&format!("etcd-m{i}"));
                let args = vec![
                    format!("--name=m{i}"),
                    format!("--data-dir={}", data.display()),
                    format!("--listen-client-urls=http://127.0.0.1:{client}"),
                    format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-cluster={}", initial.join(",")),
                    "--initial-cluster-state=new".to_owned(),
                    format!("--initial-cluster-token={token}"),
                    "--log-level=error".to_owned(),
                ];
                Member {
                    name: format!("m{i}"),
                    client: *client,
                    args,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Cluster { members };
        for i in 0..size {
            cluster.start_member(i);
        }
        cluster.wait_healthy();
        Some(cluster)
    }

    /// The store URL of the whole cluster.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}/lease-test", hosts.join(","))
    }

    /// Starts member `i` (again, on its data).
    pub fn start_member(&mut self, i: usize) {
        let member = &mut self.members[i];
        let child = Command::new("etcd")
            .args(&member.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("start etcd {}: {err}", member.name));
        member.child = Some(child);
    }

    /// Sends `signal` to member `i`.
    pub fn signal_member(&self, i: usize, signal: nix::sys::signal::Signal) {
        let child = self.members[i].child.as_ref().expect("a running member");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, signal).expect("signal etcd");
    }

    /// Stops member `i` (SIGKILL: as a crash, or a host gone).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            kill_pid(i32::try_from(child.id()).expect("pid"));
            let _ = child.wait();
        }
    }

    /// Waits until a running member answers `/health` with a leader (etcd's own check: a
    /// linearizable read through raft).
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let healthy = self
                .members
                .iter()
                .filter(|m| m.child.is_some())
                .any(|m| health(m.client));
            if healthy {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.stop_member(i);
        }
    }
}

/// Whether the rest of a test is skipped because the suite runs through brokers: the tests here
/// start an etcd and brokers of their own, which a pass through the sandbox's broker would only
/// repeat (said on stderr, as `FIRST PASS ONLY`).
fn first_pass_only() -> bool {
    if !crate::harness::broker_mode() {
        return false;
    }
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    // Straight to stderr, past the test harness's capture, as harness::local_only does.
    let _ = writeln!(
        std::io::stderr(),
        "FIRST PASS ONLY {test}: starts an etcd and brokers of its own"
    );
    true
}

/// Whether etcd at `port` says it is healthy.
fn health(port: u16) -> bool {
    Command::new("curl")
        .args(["-s", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{port}/health"))
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\""))
}

/// A broker of `sandbox` on the cluster's store, with its own socket and its own state dir
/// (as on a host of its own: only etcd is shared).
fn broker_on(sandbox: &Sandbox, cluster: &Cluster, name: &str) -> Broker {
    let url = cluster.url();
    let state = sandbox.path(&format!("{name}-state"));
    let state = state.to_str().expect("UTF-8 path");
    let socket = sandbox.path(&format!("{name}.sock"));
    Broker::start_at(sandbox, socket, &["--store", &url, "--state-dir", state])
}

/// A one-member cluster and two brokers on it, `a` and `b`.
fn two_brokers(sandbox: &Sandbox) -> Option<(Cluster, Broker, Broker)> {
    let cluster = Cluster::start(sandbox, 1)?;
    let a = broker_on(sandbox, &cluster, "a");
    let b = broker_on(sandbox, &cluster, "b");
    Some((cluster, a, b))
}

/// `lease issue --scope read:articles --json ARGS` through `broker`.
fn mint_on(sandbox: &Sandbox, broker: &Broker, args: &[&str]) -> serde_json::Value {
    sandbox
        .lease(["issue", "--scope", "read:articles", "--json"])
        .args(args)
        .env("LEASE_BROKER", broker.endpoint())
        .run()
        .success()
        .json()
}

#[test]
fn a_lease_minted_on_one_broker_is_verified_and_revoked_through_another() {
    let sandbox = Sandbox::new();
    let Some((_cluster, a, b)) = two_brokers(&sandbox) else {
        return;
    };
    let minted = mint_on(&sandbox, &a, &["--ttl", "5m"]);
    let token = minted["token"].as_str().expect("token");
    let id = minted["id"].as_str().expect("id");
    let verify = |broker: &Broker, action: &str| {
        sandbox
            .lease(["verify", action])
            .env("LEASE_BROKER", broker.endpoint())
            .env("LEASE_TOKEN", token)
            .run()
    };
    verify(&b, "read:articles").success();
    verify(&b, "write:articles")
        .code_is(1)
        .stderr_has("out of scope");
    sandbox
        .lease(["revoke", id])
        .env("LEASE_BROKER", b.endpoint())
        .run()
        .success();
    verify(&a, "read:articles").code_is(1).stderr_has("revoked");
    // Nothing of the lease is in the brokers' state dirs: the store is etcd.
    assert!(sandbox.records().is_empty(), "{:?}", sandbox.records());
}

/// The id of the member that leads the cluster now, as the running members say.
fn leader(cluster: &Cluster) -> usize {
    let status = |port: u16| -> Option<(String, String)> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "2", "-X", "POST", "--data", "{}"])
            .arg(format!("http://127.0.0.1:{port}/v3/maintenance/status"))
            .output()
            .ok()?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some((
            json["header"]["member_id"].as_str()?.to_owned(),
            json["leader"].as_str()?.to_owned(),
        ))
    };
    let statuses: Vec<Option<(String, String)>> = cluster
        .members
        .iter()
        .map(|m| m.child.as_ref().and_then(|_| status(m.client)))
        .collect();
    let leader = statuses
        .iter()
        .flatten()
        .map(|(_, leader)| leader.clone())
        .next()
        .expect("a member answers");
    statuses
        .iter()
        .position(|s| s.as_ref().is_some_and(|(me, _)| *me == leader))
        .expect("the leader is a member")
}

#[test]
fn fifty_concurrent_verifies_over_two_brokers_spend_a_three_use_budget_exactly_three_times() {
    let sandbox = Sandbox::new();
    let Some((_cluster, a, b)) = two_brokers(&sandbox) else {
        return;
    };
    let minted = mint_on(&sandbox, &a, &["--uses", "3"]);
    let token = minted["token"].as_str().expect("token");
    let endpoints = [a.endpoint(), b.endpoint()];
    let codes: Vec<Option<i32>> = std::thread::scope(|scope| {
        let verifies: Vec<_> = (0..50)
            .map(|i| {
                let (sandbox, endpoint) = (&sandbox, &endpoints[i % 2]);
                scope.spawn(move || {
                    sandbox
                        .lease(["verify", "read:articles"])
                        .env("LEASE_BROKER", endpoint)
                        .env("LEASE_TOKEN", token)
                        .run()
                        .code()
                })
            })
            .collect();
        verifies
            .into_iter()
            .map(|v| v.join().expect("verify thread"))
            .collect()
    });
    let granted = codes.iter().filter(|c| **c == Some(0)).count();
    let denied = codes.iter().filter(|c| **c == Some(1)).count();
    assert_eq!((granted, denied), (3, 47), "exit codes: {codes:?}");
}

#[test]
fn without_quorum_every_decision_fails_closed_and_decisions_resume_with_it() {
    let sandbox = Sandbox::new();
    let Some(mut cluster) = Cluster::start(&sandbox, 3) else {
        return;
    };
    let mut a = broker_on(&sandbox, &cluster, "a");
    let endpoint = a.endpoint();
    let issue = || {
        sandbox
            .lease(["issue", "--scope", "read:articles", "--json"])
            .env("LEASE_BROKER", &endpoint)
            .run()
    };
    let verify = |token: &str| {
        sandbox
            .lease(["verify", "read:articles"])
            .env("LEASE_BROKER", &endpoint)
            .env("LEASE_TOKEN", token)
            .run()
    };
    let live = issue().success().json();
    let live = live["token"].as_str().expect("token");
    let revoked = issue().success().json();
    sandbox
        .lease(["revoke", revoked["id"].as_str().expect("id")])
        .env("LEASE_BROKER", &endpoint)
        .run()
        .success();
    let revoked = revoked["token"].as_str().expect("token");
    let (mut run, run_token) = waiting_run(&sandbox, &endpoint, None);

    // One member of three down, the leader: the others elect another within a call's
    // deadline, and every decision is answered as before.
    let first = leader(&cluster);
    cluster.stop_member(first);
    verify(live).success();
    verify(revoked).code_is(1).stderr_has("revoked");
    issue().success();

    // Two down: no quorum. Every decision fails closed, naming the store, within its bound.
    let follower = (first + 1) % 3;
    cluster.stop_member(follower);
    let started = Instant::now();
    verify(live)
        .code_is(2)
        .one_error_line()
        .stderr_has("cannot reach its store etcd://127.0.0.1:");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    verify(revoked).code_is(2);
    // Forty at once, as a web server in front may ask: each is answered 503 within the
    // decision's bound (5 s), not queued behind the others' calls (8 threads, 3 s a call).
    let url = format!("http://{}/v1/verify", a.tcp);
    let waits: Vec<Duration> = std::thread::scope(|scope| {
        let asks: Vec<_> = (0..40)
            .map(|_| {
                let (url, sandbox) = (&url, &sandbox);
                scope.spawn(move || {
                    let asked = Instant::now();
                    let reply = crate::broker::curl(
                        sandbox,
                        &crate::broker::bearer(live),
                        &["--data", r#"{"action":"read:articles"}"#, url],
                    );
                    assert_eq!(reply.status, 503, "{reply:?}");
                    asked.elapsed()
                })
            })
            .collect();
        asks.into_iter()
            .map(|ask| ask.join().expect("ask"))
            .collect()
    });
    // Queued behind each other's calls, the last would wait 20 s (40 / 6 at a time, 3 s each).
    let longest = waits.iter().max().expect("waits");
    assert!(*longest < Duration::from_secs(10), "{waits:?}");
    issue().code_is(2).one_error_line().stderr_has("etcd://");
    sandbox
        .run_sh("read:articles", "touch started")
        .env("LEASE_BROKER", &endpoint)
        .run()
        .code_is(125);
    assert!(
        !sandbox.path("started").exists(),
        "a run started without its store"
    );
    // A run whose wrapper dies now: its end cannot be recorded. The broker makes the end again
    // until the store takes it.
    run.signal(nix::sys::signal::Signal::SIGKILL);
    run.wait();
    a.expect_log("could not end a gone run's lease yet, retrying");

    // Quorum back: decisions resume by themselves (after the members' election, which may fail
    // a few more decisions closed), and what was revoked is never granted meanwhile.
    cluster.start_member(first);
    cluster.start_member(follower);
    cluster.wait_healthy();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let dead = verify(revoked);
        assert_ne!(dead.code(), Some(0), "a revoked lease granted: {dead:?}");
        if verify(live).code() == Some(0) && dead.code() == Some(1) {
            dead.stderr_has("revoked");
            break;
        }
        assert!(Instant::now() < deadline, "decisions did not resume");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The run that ended meanwhile is ended within seconds by the retry, not by the sweep
    // (which needs two sweeps, owner_timeout apart: 10 s and more).
    let resumed = Instant::now();
    loop {
        let out = sandbox
            .lease(["verify", "a:b"])
            .env("LEASE_BROKER", &endpoint)
            .env("LEASE_TOKEN", &run_token)
            .run();
        if out.code() == Some(1) {
            out.stderr_has("owner gone");
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(6),
            "the run whose wrapper died is still not ended: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts `lease run --scope a:b` through `endpoint` (nested in `parent`'s lease if given) of
/// a command that prints its token and waits.
fn start_run(sandbox: &Sandbox, endpoint: &str, parent: Option<&str>) -> Running {
    let mut cmd = sandbox
        .run_sh(
            "a:b",
            "printf 'token %s\\n' \"$LEASE_TOKEN\"; exec sleep 600",
        )
        .env("LEASE_BROKER", endpoint);
    if let Some(parent) = parent {
        cmd = cmd.env("LEASE_TOKEN", parent.trim());
    }
    cmd.start()
}

/// The token a run of [`start_run`] printed.
fn token_of(run: &mut Running) -> String {
    let line = run.lines.expect("token ");
    line.trim_start_matches("token ").trim().to_owned()
}

/// [`start_run`], and its token.
fn waiting_run(sandbox: &Sandbox, endpoint: &str, parent: Option<&str>) -> (Running, String) {
    let mut run = start_run(sandbox, endpoint, parent);
    let token = token_of(&mut run);
    (run, token)
}

/// nginx balancing runs over the brokers' TCP listeners, passing a run's upgraded connection
/// through (as a load balancer in front of brokers does).
fn balancer(sandbox: &Sandbox, brokers: &[&Broker]) -> (crate::broker::NginxServer, String) {
    let front = free_port();
    let servers: String = brokers
        .iter()
        .map(|b| format!("server {} max_fails=1 fail_timeout=60s; ", b.tcp))
        .collect();
    let http = format!(
        "  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream brokers {{ {servers} }}
  server {{
    listen 127.0.0.1:{front};
    location / {{
      proxy_pass http://brokers;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_connect_timeout 2s;
      proxy_read_timeout 1h;
      proxy_buffering off;
    }}
  }}"
    );
    let nginx = crate::broker::NginxServer::start(sandbox.path("balancer"), &http);
    (nginx, format!("http://127.0.0.1:{front}"))
}

/// A broker SIGKILLed under 200 runs: the runs that reached it through the balancer come back
/// to the other broker and keep their leases; those that reached it alone are `owner gone`
/// within `owner_timeout` on every broker; the runs of the other broker never notice; and no
/// token is granted once its run has ended.
#[test]
fn a_broker_killed_under_two_hundred_runs_loses_no_run_that_can_come_back_and_no_more() {
    let sandbox = Sandbox::new();
    // Room for fifty runs to re-attach to B within it on a loaded machine.
    let owner_timeout = 3;
    sandbox.write_config(&format!("owner_timeout = {owner_timeout}\n"));
    let Some((_cluster, a, b)) = two_brokers(&sandbox) else {
        return;
    };
    let (_nginx, front) = balancer(&sandbox, &[&a, &b]);
    let _load = crate::harness::loading();
    // Over TCP a run mints under a parent lease (root leases are for operators on a socket).
    let parent = sandbox
        .lease(["issue", "--scope", "a:b", "--ttl", "10m"])
        .env("LEASE_BROKER", b.endpoint())
        .run()
        .success()
        .stdout;
    let start = |endpoint: &str, parent: Option<&str>| start_run(&sandbox, endpoint, parent);
    // 100 runs through the balancer (spread over both brokers), 50 on A's socket, 50 on B's.
    let mut runs: Vec<(&str, Running)> = Vec::new();
    for i in 0..200 {
        let run = match i % 4 {
            0 | 1 => ("balanced", start(&front, Some(&parent))),
            2 => ("on a", start(&a.endpoint(), None)),
            _ => ("on b", start(&b.endpoint(), None)),
        };
        runs.push(run);
    }
    let mut tokens: Vec<(&str, String)> = runs
        .iter_mut()
        .map(|(group, run)| (*group, token_of(run)))
        .collect();
    for (group, token) in &tokens {
        assert_eq!(reason_of(&sandbox, &b, token), "granted", "a run {group}");
    }

    kill_pid(a.pid());
    drop(a);
    // A's session expires within owner_timeout: its runs on its socket are then owner gone
    // everywhere (here within twice that: etcd's expiry, and fifty checks, take their time),
    // while every other run is granted (the balanced ones now held by B).
    let deadline = Instant::now() + Duration::from_secs(2 * owner_timeout + 1);
    let on_a: Vec<&String> = tokens
        .iter()
        .filter(|(g, _)| *g == "on a")
        .map(|(_, t)| t)
        .collect();
    while on_a
        .iter()
        .any(|t| reason_of(&sandbox, &b, t) != "owner gone")
    {
        assert!(
            Instant::now() < deadline,
            "A's runs are not owner gone within owner_timeout"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (group, token) in tokens.iter().filter(|(g, _)| *g != "on a") {
        assert_eq!(reason_of(&sandbox, &b, token), "granted", "a run {group}");
    }

    // Every run ends: no token is granted after.
    for (_, run) in &mut runs {
        run.signal(nix::sys::signal::Signal::SIGTERM);
    }
    for (_, run) in &mut runs {
        run.wait();
    }
    tokens.retain(|(_, token)| reason_of(&sandbox, &b, token) == "granted");
    assert!(
        tokens.is_empty(),
        "granted after their runs ended: {} tokens",
        tokens.len()
    );
}

#[test]
fn a_store_on_etcd_is_opened_by_a_broker_only() {
    if crate::harness::local_only("about lease with no broker to go through") {
        return;
    }
    let sandbox = Sandbox::new();
    sandbox.write_config("store = \"etcd://127.0.0.1:9/team\"\n");
    let refused = "the store is on etcd (etcd://127.0.0.1:9/team, the config's store), which only a broker opens: start `lease serve` with this config and set LEASE_BROKER (or --broker) to reach it\n";
    sandbox
        .lease(["issue", "--scope", "a"])
        .run()
        .code_is(2)
        .stderr_is(&format!("lease: {refused}"));
    sandbox
        .lease(["verify", "a"])
        .env("LEASE_TOKEN", Sandbox::new().issue("a"))
        .run()
        .code_is(2)
        .stderr_is(&format!("lease: cannot verify: {refused}"));
    sandbox
        .run_sh("a", "touch started")
        .run()
        .code_is(125)
        .one_error_line()
        .stderr_has(refused);
    assert!(!sandbox.path("started").exists());
}

/// What etcd says of the etcd lease a key is attached to: its granted TTL and what is left.
fn ttl_of_key(cluster: &Cluster, key: &str) -> (i64, i64) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let gateway = |path: &str, body: serde_json::Value| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "-X", "POST", "--data"])
            .arg(body.to_string())
            .arg(format!(
                "http://127.0.0.1:{}{path}",
                cluster.members[0].client
            ))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).expect("etcd answers JSON")
    };
    let got = gateway("/v3/kv/range", serde_json::json!({"key": b64.encode(key)}));
    let lease = got["kvs"][0]["lease"]
        .as_str()
        .expect("the key is on an etcd lease");
    let ttl = gateway("/v3/lease/timetolive", serde_json::json!({"ID": lease}));
    let number = |v: &serde_json::Value| v.as_str().expect("a number").parse::<i64>().expect("i64");
    (number(&ttl["grantedTTL"]), number(&ttl["TTL"]))
}

/// A lease's keys are on an etcd lease that ends a minute after the lease's expiry (so etcd
/// removes them by itself); a renewal moves them to one that ends a minute after the new
/// expiry.
#[test]
fn a_leases_keys_leave_etcd_on_their_own_a_minute_after_its_expiry() {
    let sandbox = Sandbox::new();
    let Some((cluster, a, _b)) = two_brokers(&sandbox) else {
        return;
    };
    let minted = mint_on(&sandbox, &a, &["--ttl", "2m"]);
    let key = format!("lease-test/leases/{}", minted["id"].as_str().expect("id"));
    let (granted, left) = ttl_of_key(&cluster, &key);
    assert!((175..=182).contains(&granted), "granted TTL {granted}");
    assert!(left <= granted && left > 170, "TTL left {left}");
    sandbox
        .lease(["renew", "--ttl", "10m"])
        .env("LEASE_BROKER", a.endpoint())
        .env("LEASE_TOKEN", minted["token"].as_str().expect("token"))
        .run()
        .success();
    // Ten minutes more: the expiry is 12 minutes away, the keys' end a minute after.
    let (granted, _) = ttl_of_key(&cluster, &key);
    assert!(
        (775..=782).contains(&granted),
        "granted TTL after renew {granted}"
    );
}

/// A broker whose store is its config's (no --store), with a state dir of its own.
fn broker_of_config(sandbox: &Sandbox) -> Broker {
    let state = sandbox.path("a-state");
    let state = state.to_str().expect("UTF-8");
    Broker::start_at(sandbox, sandbox.path("a.sock"), &["--state-dir", state])
}

/// `lease verify read:articles` of the `minted` lease's token through `broker`.
fn verify_through(
    sandbox: &Sandbox,
    broker: &Broker,
    minted: &serde_json::Value,
) -> crate::harness::Out {
    sandbox
        .lease(["verify", "read:articles"])
        .env("LEASE_BROKER", broker.endpoint())
        .env("LEASE_TOKEN", minted["token"].as_str().expect("token"))
        .run()
}

/// A reload keeps the store: a config that moves it is refused, and the broker goes on.
#[test]
fn a_reload_cannot_move_the_store() {
    let sandbox = Sandbox::new();
    let Some(cluster) = Cluster::start(&sandbox, 1) else {
        return;
    };
    sandbox.write_config(&format!("store = \"{}\"\n", cluster.url()));
    let mut broker = broker_of_config(&sandbox);
    let minted = mint_on(&sandbox, &broker, &[]);
    sandbox.write_config("store = \"etcd://127.0.0.1:9/elsewhere\"\n");
    broker.signal(nix::sys::signal::Signal::SIGHUP);
    broker.expect_log("the store (store, [etcd]) can be changed by a restart, not by a reload");
    verify_through(&sandbox, &broker, &minted).success();
}

/// `etcd+https://`: a member that asks for a client certificate, trusted through `[etcd]
/// ca_file`; the broker with `cert_file` and `key_file` serves, and one without a certificate,
/// or trusting another CA, does not start, naming the store (and, for the CA, why).
#[test]
fn a_store_over_tls_with_a_client_certificate() {
    if first_pass_only() {
        return;
    }
    let sandbox = Sandbox::new();
    if Command::new("etcd").arg("--version").output().is_err() {
        skip(
            "etcd",
            "etcd is not installed (apt-get install etcd-server)",
        );
        return;
    }
    let (ca, cert, key) = crate::broker::certificates(&sandbox);
    let (client, peer) = (free_port(), free_port());
    let etcd = Command::new("etcd")
        .arg(format!("--data-dir={}", sandbox.path("etcd-tls").display()))
        .arg(format!("--listen-client-urls=https://127.0.0.1:{client}"))
        .arg(format!(
            "--advertise-client-urls=https://127.0.0.1:{client}"
        ))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
        .arg(format!(
            "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
        ))
        .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer}"))
        .arg(format!("--cert-file={}", cert.display()))
        .arg(format!("--key-file={}", key.display()))
        .arg(format!("--trusted-ca-file={}", ca.display()))
        .args(["--client-cert-auth", "--log-level=error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd");
    let _etcd = Stopped(etcd);
    let healthy = || {
        Command::new("curl")
            .args(["-s", "--max-time", "2", "--cacert"])
            .arg(&ca)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg(format!("https://127.0.0.1:{client}/health"))
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("\"health\":\"true\""))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy() {
        assert!(
            Instant::now() < deadline,
            "etcd over TLS did not become healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let store = format!("etcd+https://127.0.0.1:{client}/tls");
    let files = format!(
        "store = \"{store}\"\n[etcd]\nca_file = \"{}\"\n",
        ca.display()
    );
    // No client certificate: the member refuses the connection, and the broker cannot start.
    sandbox.write_config(&files);
    refused_start(&sandbox, &store, "x");
    // A CA that did not sign the member's certificate: the line says why, not just that the
    // transport failed.
    let other_sandbox = Sandbox::new();
    let (other_ca, _, _) = crate::broker::certificates(&other_sandbox);
    let other = sandbox.path("other-ca.pem");
    std::fs::copy(&other_ca, &other).expect("copy the other CA");
    sandbox.write_config(&tls_config(&store, &other, &cert, &key));
    let line = refused_start(&sandbox, &store, "y");
    assert!(line.contains("invalid peer certificate"), "{line}");
    // With one: served.
    sandbox.write_config(&tls_config(&store, &ca, &cert, &key));
    let broker = broker_of_config(&sandbox);
    let minted = mint_on(&sandbox, &broker, &[]);
    verify_through(&sandbox, &broker, &minted).success();
}

/// A store nobody answers at: the broker does not start, and its one line says why as the
/// system said it, not only that the transport failed.
#[test]
fn a_store_nobody_listens_at_is_refused_at_start_with_the_reason() {
    let sandbox = Sandbox::new();
    let store = format!("etcd://127.0.0.1:{}/none", free_port());
    sandbox.write_config(&format!("store = \"{store}\"\n"));
    let line = refused_start(&sandbox, &store, "b");
    assert!(line.contains("Connection refused"), "{line}");
}

/// A client certificate and a key that do not belong together: the broker does not start,
/// and its line says so (the etcd client's own words for it are only "transport error").
#[test]
fn a_client_certificate_with_another_key_is_refused_at_start_saying_so() {
    let sandbox = Sandbox::new();
    let (ca, cert, _) = crate::broker::certificates(&sandbox);
    let other_sandbox = Sandbox::new();
    let (_, _, other_key) = crate::broker::certificates(&other_sandbox);
    let key = sandbox.path("other.key");
    std::fs::copy(&other_key, &key).expect("copy the other key");
    let store = format!("etcd+https://127.0.0.1:{}/tls", free_port());
    sandbox.write_config(&tls_config(&store, &ca, &cert, &key));
    let line = refused_start(&sandbox, &store, "b");
    assert!(line.contains("KeyMismatch"), "{line}");
}

/// A config for a store over TLS: the CA its members' certificates must chain to, and the
/// client certificate with its key.
fn tls_config(store: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "store = \"{store}\"\n[etcd]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// The one error line of a broker that cannot start on the config written; it names the store.
fn refused_start(sandbox: &Sandbox, store: &str, name: &str) -> String {
    let out = sandbox
        .lease([
            "--state-dir",
            sandbox
                .path(&format!("{name}-state"))
                .to_str()
                .expect("UTF-8"),
            "serve",
        ])
        .arg("--listen")
        .arg(format!(
            "unix:{}",
            sandbox.path(&format!("{name}.sock")).display()
        ))
        .run()
        .code_is(2)
        .one_error_line();
    assert!(
        out.stderr
            .contains(&format!("cannot open the store {store}")),
        "{out:?}"
    );
    out.stderr
}

/// A process killed and reaped when dropped, whether the test passed or not.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        kill_pid(i32::try_from(self.0.id()).expect("pid"));
        let _ = self.0.wait();
    }
}

/// A store URL with a password, in the config or on the command line, is refused in one line
/// that does not repeat it.
#[test]
fn a_store_url_with_a_password_is_refused_without_repeating_it() {
    let sandbox = Sandbox::new();
    for url in [
        "etcd://root:hunter2@127.0.0.1:2379",
        "https://root:hunter2@127.0.0.1:2379",
    ] {
        let out = sandbox
            .lease(["serve", "--store", url])
            .run()
            .code_is(2)
            .one_error_line();
        assert!(
            out.stderr.starts_with("lease: invalid --store: "),
            "{out:?}"
        );
        assert!(!out.stderr.contains("hunter2"), "{out:?}");
        let config = sandbox.path("with-password.toml");
        std::fs::write(&config, format!("store = \"{url}\"\n")).expect("config");
        let out = sandbox
            .lease(["--config", config.to_str().expect("UTF-8"), "list"])
            .run()
            .one_error_line();
        assert!(out.stderr.contains("store"), "{out:?}");
        assert!(!out.stderr.contains("hunter2"), "{out:?}");
    }
}

/// A broker stopped by SIGTERM lets go of the runs it held at once (it ends its session): a run
/// that does not come back to another broker is owner gone everywhere now, not owner_timeout
/// (10 s here) later.
#[test]
fn a_broker_that_stops_lets_go_of_its_runs_at_once() {
    let sandbox = Sandbox::new();
    let Some((_cluster, a, b)) = two_brokers(&sandbox) else {
        return;
    };
    let (mut run, token) = waiting_run(&sandbox, &a.endpoint(), None);
    assert_eq!(reason_of(&sandbox, &b, &token), "granted");
    let started = Instant::now();
    let (status, _) = a.stop();
    assert_eq!(status.code(), Some(0));
    assert_eq!(reason_of(&sandbox, &b, &token), "owner gone");
    // Well within owner_timeout (10 s), on a loaded machine too.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Its wrapper would try to tell a broker for owner_timeout: not waited for here.
    run.signal(nix::sys::signal::Signal::SIGKILL);
    run.wait();
}

/// A broker cut off from etcd for longer than its session (here: etcd frozen by SIGSTOP)
/// loses the holds of its runs; once etcd is back, the broker opens a new session and lets its
/// runs re-attach under it, and their tokens are granted again, on every broker.
#[test]
fn a_broker_that_lost_its_session_lets_its_runs_re_attach_under_a_new_one() {
    use nix::sys::signal::Signal;
    let sandbox = Sandbox::new();
    sandbox.write_config("owner_timeout = 2\n");
    let Some((cluster, mut a, b)) = two_brokers(&sandbox) else {
        return;
    };
    let (mut run, token) = waiting_run(&sandbox, &a.endpoint(), None);
    assert_eq!(reason_of(&sandbox, &b, &token), "granted");
    cluster.signal_member(0, Signal::SIGSTOP);
    // Frozen, etcd tells nothing: what must pass is its own clock, past the sessions' TTL, and
    // past the deadline of the broker's calls (3 s), so that its keep-alive stream ends and
    // must be opened again on a session etcd has let go (a broker then refused every run,
    // retrying that session forever).
    std::thread::sleep(Duration::from_secs(7));
    cluster.signal_member(0, Signal::SIGCONT);
    a.expect_log("opened a new session");
    a.expect_log("run re-attached");
    let deadline = Instant::now() + Duration::from_secs(8);
    while reason_of(&sandbox, &b, &token) != "granted" {
        assert!(Instant::now() < deadline, "not granted again in time");
        std::thread::sleep(Duration::from_millis(100));
    }
    // New runs are held under the new session.
    let (mut second, fresh) = waiting_run(&sandbox, &a.endpoint(), None);
    assert_eq!(reason_of(&sandbox, &b, &fresh), "granted");
    second.signal(Signal::SIGTERM);
    second.wait();
    run.signal(Signal::SIGTERM);
    run.wait();
    assert_eq!(reason_of(&sandbox, &b, &token), "revoked");
}
