//! The clusters of `scripts/cluster.sh`: three RabbitMQ 4.0.5 nodes (shared by the
//! cluster tests, which run one at a time: `make test` runs them in a step of their own)
//! and a PostgreSQL primary with two streaming standbys (one per test: a failover
//! changes who is primary). Where the machine cannot run them (not root, no RabbitMQ 4
//! root), the script says why and the test skips with that line.

use std::{path::PathBuf, process::Command};

use order_service::amqp::{self, Nodes};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/cluster.sh");

/// `cluster.sh ARGS`: its stdout, or `None` (printing why) where clusters cannot be had.
fn script(args: &[&str]) -> Option<String> {
    let output = Command::new(SCRIPT).args(args).output().expect("scripts/cluster.sh runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    match output.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&output.stdout).trim().to_owned()),
        Some(3) => {
            println!("skipped: {}", stderr.lines().last().unwrap_or_default());
            None
        }
        _ => panic!("cluster.sh {args:?} failed: {stderr}"),
    }
}

/// The three-node RabbitMQ cluster, every node up.
pub struct RabbitCluster {
    pub url: String,
}

impl RabbitCluster {
    /// Starts (or completes) the cluster; `None` where it cannot run here.
    pub fn start() -> Option<Self> {
        script(&["rabbitmq"]).map(|url| RabbitCluster { url })
    }

    /// The three nodes, for a connection named `name`.
    pub fn nodes(&self, name: &str) -> Nodes {
        amqp::connection_args(&self.url, name).unwrap()
    }

    /// `kill -9` node `n`'s Erlang VM.
    pub fn kill(&self, n: u8) {
        let pid = script(&["rabbitmq-pid", &n.to_string()]).unwrap();
        assert!(!pid.is_empty(), "node {n} is not running");
        assert!(Command::new("kill").args(["-9", &pid]).status().unwrap().success());
    }

    /// Every node up again (a killed one restarted; it rejoins by itself).
    pub fn restore(&self) {
        script(&["rabbitmq"]).unwrap();
    }

    /// `rabbitmqctl ARGS --formatter json` on the first node of `alive`, parsed.
    fn ctl_json(&self, alive: &[u8], args: &[&str]) -> Value {
        let n = alive[0].to_string();
        let mut all = vec!["rabbitmq-ctl", &n, "-q"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--formatter", "json"]);
        serde_json::from_str(&script(&all).unwrap()).unwrap()
    }

    /// The node (1 to 3) a client connection named `name` is on, asked of a live node.
    pub fn node_of_connection(&self, alive: &[u8], name: &str) -> Option<u8> {
        // Cluster-wide; the server port the client reached tells the node (5673 + n).
        let connections = self.ctl_json(alive, &["list_connections", "client_properties", "port"]);
        connections.as_array()?.iter().find_map(|c| {
            let named = c["client_properties"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p[0] == "connection_name" && p[2].as_str() == Some(name));
            let port = c["port"].as_u64()?;
            named.then(|| u8::try_from(port.checked_sub(5673)?).ok()).flatten()
        })
    }

    /// The nodes (1 to 3) the cluster says run, asked of node 1.
    pub fn running_nodes(&self) -> Vec<u8> {
        let status = self.ctl_json(&[1], &["cluster_status"]);
        let mut nodes: Vec<u8> = status["running_nodes"]
            .as_array()
            .unwrap_or_else(|| panic!("no running_nodes in {status}"))
            .iter()
            .filter_map(|node| node_number(node.as_str()?))
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// The node (1 to 3) leading quorum queue `queue`.
    pub fn leader_of(&self, alive: &[u8], queue: &str) -> u8 {
        let queues = self.ctl_json(alive, &["list_queues", "name", "leader"]);
        let leader = queues
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == queue)
            .and_then(|q| q["leader"].as_str())
            .unwrap_or_else(|| panic!("no leader for {queue} in {queues}"));
        node_number(leader).unwrap()
    }
}

fn node_number(node: &str) -> Option<u8> {
    node.strip_prefix("rabbitc")?.split('@').next()?.parse().ok()
}

/// A PostgreSQL primary with two streaming standbys, in a directory of the test's own.
pub struct PgCluster {
    pub dir: PathBuf,
    /// The primary's port; the standbys listen on the next two.
    pub port: u16,
}

impl PgCluster {
    /// `sync`: `synchronous_standby_names = 'ANY 1 (standby1, standby2)'`; else none.
    pub fn start(sync: bool) -> Option<Self> {
        let dir = std::env::temp_dir().join(format!("pg-cluster-{}", uuid::Uuid::new_v4().simple()));
        let port = free_ports(3);
        let mode = if sync { "sync" } else { "async" };
        script(&["postgres", dir.to_str().unwrap(), &port.to_string(), mode])?;
        Some(PgCluster { dir, port })
    }

    pub fn url(&self, port: u16, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{database}")
    }

    /// `kill -9` every process of `server` (`primary`, `standby1`, `standby2`).
    pub fn kill(&self, server: &str) {
        script(&["postgres-kill", self.dir.to_str().unwrap(), server]).unwrap();
    }

    /// Stops (SIGSTOP) the primary's WAL senders: it goes on committing, and with
    /// asynchronous replication acknowledging, what its standbys no longer receive.
    pub fn pause_wal_senders(&self) {
        let postmaster = std::fs::read_to_string(self.dir.join("primary/postmaster.pid")).unwrap();
        let postmaster = postmaster.lines().next().unwrap().trim().to_owned();
        let senders = Command::new("pgrep").args(["-P", &postmaster, "-f", "walsender"]).output().unwrap();
        let pids: Vec<String> =
            String::from_utf8_lossy(&senders.stdout).split_whitespace().map(str::to_owned).collect();
        assert_eq!(pids.len(), 2, "one WAL sender per standby");
        assert!(Command::new("kill").arg("-STOP").args(&pids).status().unwrap().success());
    }

    /// Promotes standby `n`, the other following it; the new primary's port.
    pub fn promote(&self, n: u8) -> u16 {
        script(&["postgres-promote", self.dir.to_str().unwrap(), &n.to_string()]).unwrap();
        self.port + u16::from(n)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new(SCRIPT).args(["postgres-stop", self.dir.to_str().unwrap()]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The first of `count` consecutive free ports.
fn free_ports(count: u16) -> u16 {
    loop {
        let first = super::processes::free_port();
        if first < u16::MAX - count && (1..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", first + i)).is_ok())
        {
            return first;
        }
    }
}
