//! The Prometheus page (`GET /metrics`), rendered from a snapshot the daemon
//! takes at scrape time.
//!
//! A fresh registry is built for every scrape: the daemon's figures already
//! live in its own atomics, so copying them into prometheus-client's types at
//! scrape time keeps one source of truth and needs no registration at start.
//! Monotonic figures are counters (`_total`), levels are gauges. The page is
//! the Prometheus text format 0.0.4, which every scraper and `promtool` reads.

use prometheus_client::{
    encoding::prometheus_text,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Metric, Registry},
};

use crate::events::pipeline::SinkReport;

/// The `Content-Type` of what [`render`] produces.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Everything /metrics reports, read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    pub node: String,
    /// Events that left the daemon, by (kind, verdict).
    pub events: Vec<((String, String), u64)>,
    /// Events the kernel could not put in the ring (ring full).
    pub kernel_ring_drops: u64,
    /// Hook runs that failed to read kernel memory or a map.
    pub hook_errors: u64,
    /// Paths of identities that could not be resolved to the root.
    pub paths_unresolved: u64,
    pub actions_judged: u64,
    pub sinks: Vec<SinkReport>,
    /// Map name, entries in use, capacity.
    pub map_fill: Vec<(String, usize, u32)>,
    pub policy_generation: u32,
    pub approvals_pending: u64,
    /// Events held back by the per-identity cap (each summarised).
    pub events_suppressed: u64,
    pub audit_records: u64,
    pub audit_dropped: u64,
    pub uptime_seconds: u64,
}

type Labels = Vec<(&'static str, String)>;
type CounterFamily = Family<Labels, Counter>;
type GaugeFamily = Family<Labels, Gauge<u64, std::sync::atomic::AtomicU64>>;

/// The page in the Prometheus text format (see [`CONTENT_TYPE`]).
pub fn render(snapshot: &MetricsSnapshot) -> String {
    let registry = registry(snapshot);
    let mut page = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut page, &registry);
    page
}

/// Every figure of `snapshot`, under the `rtid_` prefix. (The encoder adds
/// `_total` to counters and `_info` to info metrics, so names here omit them.)
fn registry(snapshot: &MetricsSnapshot) -> Registry {
    let mut registry = Registry::with_prefix("rtid");
    register_events(&mut registry, snapshot);
    register_kernel(&mut registry, snapshot);
    register_sinks(&mut registry, &snapshot.sinks);
    register_maps(&mut registry, &snapshot.map_fill);
    register_daemon(&mut registry, snapshot);
    registry
}

fn register_events(registry: &mut Registry, snapshot: &MetricsSnapshot) {
    let events = CounterFamily::default();
    for ((kind, verdict), count) in &snapshot.events {
        let labels = vec![("kind", kind.clone()), ("verdict", verdict.clone())];
        events.get_or_create(&labels).inc_by(*count);
    }
    registry.register("events", "Events that left the daemon, by kind and verdict", events);
    registry.register(
        "events_suppressed",
        "Events held back by the per-identity cap (each summarised in a suppressed event)",
        counter(snapshot.events_suppressed),
    );
    registry.register("actions_judged", "Actions the kernel programs judged", counter(snapshot.actions_judged));
}

fn register_kernel(registry: &mut Registry, snapshot: &MetricsSnapshot) {
    registry.register(
        "kernel_ring_drops",
        "Events the kernel could not put in the ring buffer because it was full",
        counter(snapshot.kernel_ring_drops),
    );
    registry.register(
        "hook_errors",
        "Hook runs that failed to read kernel memory or a map",
        counter(snapshot.hook_errors),
    );
    registry.register(
        "paths_unresolved",
        "File and exec paths of identities that could not be resolved to the root (judged by unresolvedPath)",
        counter(snapshot.paths_unresolved),
    );
}

fn register_sinks(registry: &mut Registry, sinks: &[SinkReport]) {
    let delivered = CounterFamily::default();
    let dropped = CounterFamily::default();
    let errors = CounterFamily::default();
    let depth = GaugeFamily::default();
    let capacity = GaugeFamily::default();
    for sink in sinks {
        let with_format = vec![("sink", sink.name.clone()), ("format", sink.format.clone())];
        let sink_only = vec![("sink", sink.name.clone())];
        delivered.get_or_create(&with_format).inc_by(sink.delivered);
        dropped.get_or_create(&with_format).inc_by(sink.dropped);
        errors.get_or_create(&sink_only).inc_by(sink.errors);
        depth.get_or_create(&sink_only).set(sink.queue_depth);
        capacity.get_or_create(&sink_only).set(sink.queue_capacity);
    }
    registry.register("sink_delivered", "Events a sink wrote out", delivered);
    registry.register(
        "sink_dropped",
        "Events a sink lost: its queue was full, its peer was gone, or a write failed",
        dropped,
    );
    registry.register("sink_errors", "Write or connection failures of a sink", errors);
    registry.register("sink_queue_depth", "Events waiting in a sink's queue", depth);
    registry.register("sink_queue_capacity", "Events a sink's queue can hold", capacity);
}

fn register_maps(registry: &mut Registry, maps: &[(String, usize, u32)]) {
    let entries = GaugeFamily::default();
    let capacity = GaugeFamily::default();
    for (map, in_use, max) in maps {
        let labels = vec![("map", map.clone())];
        entries.get_or_create(&labels).set(*in_use as u64);
        capacity.get_or_create(&labels).set(u64::from(*max));
    }
    registry.register("map_entries", "Entries in use in a kernel map", entries);
    registry.register("map_capacity", "Entries a kernel map can hold", capacity);
}

fn register_daemon(registry: &mut Registry, snapshot: &MetricsSnapshot) {
    registry.register(
        "policy_generation",
        "Generation of the policy in force",
        gauge(u64::from(snapshot.policy_generation)),
    );
    registry.register("approvals_pending", "Approval requests awaiting an answer", gauge(snapshot.approvals_pending));
    registry.register("audit_records", "Records written to the audit trail", counter(snapshot.audit_records));
    registry.register("audit_dropped", "Records the audit trail could not keep", counter(snapshot.audit_dropped));
    registry.register("uptime_seconds", "Seconds since the daemon started", gauge(snapshot.uptime_seconds));
    registry.register("node", "The node this daemon runs on", node_info(&snapshot.node));
}

fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

fn gauge(value: u64) -> Gauge<u64, std::sync::atomic::AtomicU64> {
    let gauge = Gauge::default();
    gauge.set(value);
    gauge
}

/// `rtid_node_info{node="..."} 1`: the node as a label, to join other series on.
fn node_info(node: &str) -> impl Metric {
    Info::new(vec![("node", node.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn populated() -> MetricsSnapshot {
        let sink = |name: &str, format: &str| SinkReport {
            name: name.into(),
            format: format.into(),
            delivered: 10,
            dropped: 2,
            errors: 1,
            queue_depth: 3,
            queue_capacity: 8192,
        };
        MetricsSnapshot {
            node: "node-a".into(),
            events: vec![(("file".into(), "deny".into()), 7), (("connect".into(), "allow".into()), 3)],
            kernel_ring_drops: 4,
            hook_errors: 1,
            paths_unresolved: 6,
            actions_judged: 1000,
            sinks: vec![sink("stdout", "json"), sink("file:/var/log/rtid/events.jsonl", "ocsf"), sink("http", "json")],
            map_fill: vec![("IDENTITIES".into(), 12, 4096), ("RULES".into(), 40, 65536)],
            policy_generation: 3,
            approvals_pending: 2,
            events_suppressed: 5,
            audit_records: 17,
            audit_dropped: 0,
            uptime_seconds: 3600,
        }
    }

    /// The value of the sample written exactly as `series` (name and labels).
    fn sample(page: &str, series: &str) -> Option<String> {
        page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ').map(str::to_string))
    }

    #[test]
    fn every_metric_is_named_and_valued_from_the_snapshot() {
        let page = render(&populated());
        let expected = [
            (r#"rtid_events_total{kind="file",verdict="deny"}"#, "7"),
            (r#"rtid_events_total{kind="connect",verdict="allow"}"#, "3"),
            ("rtid_kernel_ring_drops_total", "4"),
            ("rtid_hook_errors_total", "1"),
            ("rtid_paths_unresolved_total", "6"),
            ("rtid_actions_judged_total", "1000"),
            (r#"rtid_sink_delivered_total{sink="stdout",format="json"}"#, "10"),
            (r#"rtid_sink_dropped_total{sink="file:/var/log/rtid/events.jsonl",format="ocsf"}"#, "2"),
            (r#"rtid_sink_errors_total{sink="http"}"#, "1"),
            (r#"rtid_sink_queue_depth{sink="http"}"#, "3"),
            (r#"rtid_sink_queue_capacity{sink="http"}"#, "8192"),
            (r#"rtid_map_entries{map="IDENTITIES"}"#, "12"),
            (r#"rtid_map_capacity{map="RULES"}"#, "65536"),
            ("rtid_policy_generation", "3"),
            ("rtid_approvals_pending", "2"),
            ("rtid_events_suppressed_total", "5"),
            ("rtid_audit_records_total", "17"),
            ("rtid_audit_dropped_total", "0"),
            ("rtid_uptime_seconds", "3600"),
            (r#"rtid_node_info{node="node-a"}"#, "1"),
        ];
        for (series, value) in expected {
            assert_eq!(sample(&page, series).as_deref(), Some(value), "{series} in\n{page}");
        }
        for family in ["rtid_events_total", "rtid_uptime_seconds", "rtid_node_info"] {
            assert!(page.contains(&format!("# HELP {family} ")), "HELP for {family} in\n{page}");
        }
        assert!(page.contains("# TYPE rtid_events_total counter\n"), "{page}");
        assert!(page.contains("# TYPE rtid_sink_queue_depth gauge\n"), "{page}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut snapshot = populated();
        snapshot.node = "a\"b\\c\nd".into();
        let page = render(&snapshot);
        assert!(page.contains(r#"rtid_node_info{node="a\"b\\c\nd"} 1"#), "{page}");
    }

    /// `promtool check metrics` parses the page and lints it (naming,
    /// suffixes, HELP); a warning fails the test as surely as a parse error.
    fn promtool_check(page: &str) {
        use std::io::Write;
        let mut child = match std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            Err(error) => panic!(
                "promtool is needed to check the /metrics page ({error}); \
                 install Debian's `prometheus` package: apt-get install -y prometheus"
            ),
        };
        child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
        let output = child.wait_with_output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{page}");
    }

    #[test]
    fn a_populated_page_passes_promtool() {
        promtool_check(&render(&populated()));
    }

    #[test]
    fn an_empty_page_passes_promtool() {
        promtool_check(&render(&MetricsSnapshot::default()));
    }
}
