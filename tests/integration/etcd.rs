//! Brokers sharing one store on a real etcd cluster (the Debian package `etcd-server`), started
//! on loopback ports by each test: a token minted on one broker is checked on another, a
//! revocation or a budget holds across them, and losing quorum fails every decision closed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::{Broker, free_port};
use crate::harness::{Sandbox, kill_pid, skip};

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

#[test]
fn a_lease_minted_on_one_broker_is_verified_and_revoked_through_another() {
    let sandbox = Sandbox::new();
    let Some(cluster) = Cluster::start(&sandbox, 1) else {
        return;
    };
    let a = broker_on(&sandbox, &cluster, "a");
    let b = broker_on(&sandbox, &cluster, "b");
    let minted = sandbox
        .lease(["issue", "--scope", "read:articles", "--ttl", "5m", "--json"])
        .env("LEASE_BROKER", a.endpoint())
        .run()
        .success()
        .json();
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
