//! What the fleet bench reads besides the edges' pages: process CPU and RSS from `/proc`, etcd's
//! own counters from its `/metrics`, and the edges' node records as etcd delivers them.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use etcd_client::WatchOptions;
use statiko_common::keys::KeySchema;
use statiko_common::model::{self, NodeStatusRecord};
use statiko_tests::cluster::KEY_PREFIX;
use statiko_tests::{Etcd, Fleet, http_get};
use tokio::sync::Notify;

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// User + system CPU of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unexpected /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Resident set size (`VmRSS`) in KiB.
pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Proportional set size (`Pss` in `smaps_rollup`) in KiB: pages shared with other processes
/// (the executable's code, which all edges map) count once over all of them, so the edges' Pss
/// adds up to what they hold together, where the sum of their RSS counts the code N times.
pub(crate) fn pss_kib(pid: u32) -> Result<u64> {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

fn proc_kib(path: &str, field: &str) -> Result<u64> {
    std::fs::read_to_string(path)?
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// CPU used by the leader, control, etcd and all edges over a phase.
#[derive(Debug)]
pub(crate) struct Cpu {
    leader: Option<u32>,
    start: [u64; 4],
    end: [u64; 4],
    started: Instant,
    wall: Duration,
}

impl Cpu {
    /// Starts counting; `leader` is the leader edge's index.
    pub(crate) fn start(fleet: &Fleet, leader: usize) -> Self {
        let leader = fleet.edges[leader].pid();
        let start = Self::read(fleet, leader);
        Self {
            leader,
            start,
            end: start,
            started: Instant::now(),
            wall: Duration::ZERO,
        }
    }

    fn read(fleet: &Fleet, leader: Option<u32>) -> [u64; 4] {
        let ticks = |pid: Option<u32>| pid.and_then(|pid| cpu_ticks(pid).ok()).unwrap_or(0);
        let edges = fleet.edges.iter().map(|edge| ticks(edge.pid())).sum();
        [
            ticks(leader),
            ticks(fleet.control.pid()),
            ticks(fleet.etcd.pid()),
            edges,
        ]
    }

    /// Stops counting.
    pub(crate) fn stop(mut self, fleet: &Fleet) -> Self {
        self.end = Self::read(fleet, self.leader);
        self.wall = self.started.elapsed();
        self
    }

    #[expect(clippy::print_stdout)]
    pub(crate) fn print(&self, deploys: usize, edges: usize) {
        let per = |i: usize| {
            (self.end[i].saturating_sub(self.start[i])) as f64 / TICKS_PER_SECOND * 1000.0
                / deploys as f64
        };
        println!(
            "  CPU per deploy (ms): leader edge {:.1}, control {:.1}, etcd {:.1}, all edges {:.1} ({:.1} per edge); phase took {:.1} s",
            per(0),
            per(1),
            per(2),
            per(3),
            per(3) / edges as f64,
            self.wall.as_secs_f64(),
        );
    }
}

/// etcd's counters, by metric name (labels summed).
#[derive(Debug)]
pub(crate) struct EtcdMetrics(BTreeMap<String, f64>);

/// The counters worth a line, with what they count.
const COUNTERS: &[(&str, &str)] = &[
    ("etcd_mvcc_put_total", "keys put"),
    ("etcd_mvcc_txn_total", "transactions"),
    ("etcd_mvcc_delete_total", "deletes"),
    ("etcd_mvcc_range_total", "range reads"),
    (
        "etcd_debugging_mvcc_put_total",
        "keys put (debugging counter)",
    ),
    (
        "etcd_server_proposals_committed_total",
        "raft proposals committed",
    ),
    ("etcd_disk_wal_fsync_duration_seconds_count", "WAL fsyncs"),
    ("etcd_debugging_mvcc_events_total", "watch events sent"),
    (
        "etcd_network_client_grpc_received_bytes_total",
        "gRPC bytes received",
    ),
    (
        "etcd_network_client_grpc_sent_bytes_total",
        "gRPC bytes sent",
    ),
];

impl EtcdMetrics {
    pub(crate) async fn read(etcd: &Etcd) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], etcd.client_port()));
        let reply = http_get(addr, "127.0.0.1", "/metrics").await?;
        let text = String::from_utf8_lossy(&reply.body);
        let mut values = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let name = series.split('{').next().unwrap_or(series);
            if let Ok(value) = value.parse::<f64>() {
                *values.entry(name.to_owned()).or_insert(0.0) += value;
            }
        }
        Ok(Self(values))
    }

    /// Prints each counter's growth per deploy (and per deploy and edge) since `before`.
    #[expect(clippy::print_stdout)]
    pub(crate) fn print_delta(&self, before: &Self, deploys: usize, edges: usize) {
        println!("  etcd, per deploy (per deploy and edge):");
        for (name, what) in COUNTERS {
            let (Some(after), Some(start)) = (self.0.get(*name), before.0.get(*name)) else {
                continue;
            };
            let per = (after - start) / deploys as f64;
            println!(
                "    {what:<28} {per:>12.1} ({:.2})   [{name}]",
                per / edges as f64
            );
        }
    }
}

/// The edges' node records as etcd delivers them: when each edge first reported serving the
/// expected app for the site.
#[derive(Debug)]
pub(crate) struct NodeReports {
    state: Arc<Mutex<Reports>>,
    changed: Arc<Notify>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Reports {
    expected: String,
    /// When each node first reported the expected app.
    reported: BTreeMap<String, Instant>,
    /// Nodes whose record was seen at all.
    nodes: HashSet<String>,
}

impl NodeReports {
    /// Watches every node record from now on, noting which serve `site` at which app.
    pub(crate) async fn watch(etcd: &Etcd, site: &str) -> Result<Self> {
        let mut client = etcd.client().await?;
        let prefix = KeySchema::new(KEY_PREFIX).nodes();
        let mut stream = client
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await?;
        let state = Arc::new(Mutex::new(Reports::default()));
        let changed = Arc::new(Notify::new());
        let site = site.to_owned();
        let task = {
            let state = state.clone();
            let changed = changed.clone();
            tokio::spawn(async move {
                while let Ok(Some(reply)) = stream.message().await {
                    let now = Instant::now();
                    for event in reply.events() {
                        let Some(kv) = event.kv() else { continue };
                        let Ok(record) = model::decode::<NodeStatusRecord>(kv.value()) else {
                            continue;
                        };
                        let app = record
                            .sites
                            .iter()
                            .find(|s| s.domain == site)
                            .and_then(|s| s.app.as_ref())
                            .map(ToString::to_string);
                        let mut reports = state.lock().expect("reports lock");
                        reports.nodes.insert(record.name.clone());
                        if app.is_some_and(|app| app == reports.expected) {
                            reports.reported.entry(record.name).or_insert(now);
                        }
                    }
                    changed.notify_waiters();
                }
            })
        };
        Ok(Self {
            state,
            changed,
            _task: task,
        })
    }

    /// From now on, look for `app` (`name@version`).
    pub(crate) fn expect(&mut self, app: &str) {
        let mut reports = self.state.lock().expect("reports lock");
        reports.expected = app.to_owned();
        reports.reported.clear();
    }

    /// Waits until `edges` nodes reported the expected app; the time from `since` to the last.
    pub(crate) async fn all_reported(&self, edges: usize, since: Instant) -> Result<Duration> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let notified = self.changed.notified();
            {
                let reports = self.state.lock().expect("reports lock");
                if reports.reported.len() >= edges {
                    let last = reports.reported.values().max().copied().unwrap_or(since);
                    return Ok(last.saturating_duration_since(since));
                }
            }
            if Instant::now() > deadline {
                let reports = self.state.lock().expect("reports lock");
                bail!(
                    "only {} of {edges} node records report {} after 60 s",
                    reports.reported.len(),
                    reports.expected
                );
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
    }
}
