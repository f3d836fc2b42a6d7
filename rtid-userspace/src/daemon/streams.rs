//! What happens to an event between the kernel ring and the outside world:
//! numbered and timed, enriched from /proc, written to the audit trail if it
//! is a decision, capped per identity, then offered to every sink. Nothing
//! here waits on a sink; everything that is not delivered is counted.

use std::{
    collections::BTreeMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime},
};

use anyhow::Context;
use tokio::sync::broadcast;
use tracing::{info, warn};

use super::config::{DaemonConfig, SinkConfig};
use crate::{
    audit::{self, AuditKind, AuditWriter},
    events::{
        pipeline::{Format, Pipeline, SharedRecord, SinkReport, SinkStats, sink_queue},
        record::EventRecord,
        sinks,
        throttle::{Admission, Throttle},
    },
};

/// The `rtid events --follow` clients share one broadcast channel of this size.
const SOCKET_CHANNEL: usize = 8192;

pub struct Streams {
    pub node: String,
    pipeline: Pipeline,
    /// Events `rtid events --follow` clients missed because they read too slowly.
    pub socket_stats: Arc<SinkStats>,
    socket: broadcast::Sender<SharedRecord>,
    audit: Option<AuditWriter>,
    throttle: Option<Throttle>,
    /// Events that left the daemon, by (kind, verdict).
    counts: BTreeMap<String, BTreeMap<String, u64>>,
    next_seq: u64,
}

/// The pieces a sink task needs that only exist once the runtime runs.
pub struct PendingHttp {
    pub listener: tokio::net::TcpListener,
    pub events: Option<sinks::http::HttpEvents>,
}

impl Streams {
    /// Opens the audit trail and starts every sink task. `events_stdout` is the
    /// older `--events-stdout` flag: a JSON stdout sink.
    pub async fn start(config: &DaemonConfig, events_stdout: bool) -> anyhow::Result<(Streams, Option<PendingHttp>)> {
        let node = config.node_name.clone().unwrap_or_else(crate::events::enrich::Enricher::node_name);
        let mut sinks_config = config.sinks.clone();
        if events_stdout && !sinks_config.iter().any(|sink| matches!(sink, SinkConfig::Stdout { .. })) {
            sinks_config.push(SinkConfig::Stdout { format: Format::Json, queue: super::config::DEFAULT_QUEUE });
        }
        let mut pipeline = Pipeline::default();
        let mut http_events = None;
        for sink in &sinks_config {
            let (queue, input) = sink_queue(&sink.name(), sink.format(), sink.queue());
            match sink.clone() {
                SinkConfig::Stdout { .. } => {
                    tokio::spawn(sinks::stdout::run(input));
                    pipeline.add(queue);
                }
                SinkConfig::File { path, max_size, keep, .. } => {
                    tokio::spawn(sinks::file::run(path, max_size.as_u64(), keep, input));
                    pipeline.add(queue);
                }
                SinkConfig::Nats { url, stream, .. } => {
                    tokio::spawn(sinks::nats::run(url, stream, node.clone(), input));
                    pipeline.add(queue);
                }
                SinkConfig::Http { token_file, queue: client_queue, .. } => {
                    let token = sinks::http::read_token(&token_file).map_err(anyhow::Error::msg)?;
                    let depth = Arc::new(std::sync::atomic::AtomicU64::new(0));
                    pipeline.add(queue.with_extra_depth(depth.clone()));
                    http_events = Some(sinks::http::HttpEvents { token, input, client_queue, depth });
                }
            }
            info!(sink = %sink.name(), format = sink.format().name(), "event sink started");
        }
        let http = match &config.http {
            Some(http) => {
                let listener = tokio::net::TcpListener::bind(http.listen)
                    .await
                    .with_context(|| format!("http.listen: binding {}", http.listen))?;
                Some(PendingHttp { listener, events: http_events })
            }
            None => None,
        };
        let audit = match &config.audit {
            Some(audit_config) => Some(audit::start(audit_config).context("audit trail")?),
            None => None,
        };
        let (socket, _) = broadcast::channel(SOCKET_CHANNEL);
        let streams = Streams {
            node,
            pipeline,
            socket_stats: Arc::new(SinkStats::default()),
            socket,
            audit,
            throttle: config.throttle.as_ref().map(|throttle| Throttle::new(throttle.per_identity_per_second)),
            counts: BTreeMap::new(),
            next_seq: 1,
        };
        Ok((streams, http))
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SharedRecord> {
        self.socket.subscribe()
    }

    /// The next per-node sequence number.
    pub fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Sends one enriched event on: audit trail (decisions), cap, sinks.
    pub fn emit(&mut self, record: EventRecord) {
        if is_decision(&record)
            && let Some(audit) = &self.audit
        {
            audit.append(AuditKind::Decision, serde_json::to_value(&record).unwrap_or_default());
        }
        if let Some(throttle) = self.throttle.as_mut()
            && record.identity_id != 0
        {
            let (admission, closed) = throttle.admit(record.identity_id, record.time_boot_ns / 1_000_000_000);
            if let Some(closed) = closed {
                let summary = self.suppressed_summary(&record, closed.count);
                self.send(summary);
            }
            if admission == Admission::Suppress {
                return;
            }
        }
        self.send(record);
    }

    /// Summaries of windows that closed without a later event (once a second).
    pub fn flush_throttle(&mut self, now_boot_ns: u64, names: &dyn Fn(u32) -> Option<String>) {
        let Some(throttle) = self.throttle.as_mut() else {
            return;
        };
        for closed in throttle.closed_before(now_boot_ns / 1_000_000_000) {
            let template = EventRecord {
                identity_id: closed.identity_id,
                identity: names(closed.identity_id),
                time_boot_ns: now_boot_ns,
                ..EventRecord::from_daemon("suppressed")
            };
            let summary = self.suppressed_summary(&template, closed.count);
            self.send(summary);
        }
    }

    /// A control-plane change (label, grant, approval, policy, ...) for the audit trail.
    pub fn audit_change(&self, body: serde_json::Value) {
        if let Some(audit) = &self.audit {
            audit.append(AuditKind::Change, body);
        }
    }

    /// Writes out what the audit trail holds (at shutdown).
    pub fn close(&self) {
        if let Some(audit) = &self.audit {
            audit.flush_and_stop();
        }
    }

    fn suppressed_summary(&mut self, like: &EventRecord, count: u64) -> EventRecord {
        let identity = like.identity.clone().unwrap_or_else(|| like.identity_id.to_string());
        warn!(identity = %identity, suppressed = count, "event cap reached: events summarised");
        EventRecord {
            seq: self.next_seq(),
            time: wall_clock_now(),
            node: self.node.clone(),
            identity_id: like.identity_id,
            identity: like.identity.clone(),
            delegation_chain: like.delegation_chain.clone(),
            owner: like.owner.clone(),
            purpose: like.purpose.clone(),
            time_boot_ns: like.time_boot_ns,
            rule: Some(format!("{count} events suppressed for identity {identity} in the last second")),
            suppressed: Some(count),
            ..EventRecord::from_daemon("suppressed")
        }
    }

    fn send(&mut self, record: EventRecord) {
        // Looked up by &str: no allocation per event once a pair has been seen.
        match self
            .counts
            .get_mut(record.kind.as_str())
            .and_then(|by_verdict| by_verdict.get_mut(record.verdict.as_str()))
        {
            Some(count) => *count += 1,
            None => {
                self.counts.entry(record.kind.clone()).or_default().insert(record.verdict.clone(), 1);
            }
        }
        let shared: SharedRecord = Arc::new(record);
        self.pipeline.publish(&shared);
        // No subscriber is not a loss: nobody asked for the stream.
        let _ = self.socket.send(shared);
    }

    pub fn counts(&self) -> Vec<((String, String), u64)> {
        self.counts
            .iter()
            .flat_map(|(kind, by_verdict)| {
                by_verdict.iter().map(move |(verdict, count)| ((kind.clone(), verdict.clone()), *count))
            })
            .collect()
    }

    pub fn suppressed_total(&self) -> u64 {
        self.throttle.as_ref().map_or(0, |throttle| throttle.total_suppressed)
    }

    pub fn audit_stats(&self) -> (u64, u64) {
        self.audit.as_ref().map_or((0, 0), |audit| {
            let stats = audit.stats();
            (stats.written, stats.dropped)
        })
    }

    /// Every sink's numbers, the control socket's included.
    pub fn reports(&self) -> Vec<SinkReport> {
        let mut reports = self.pipeline.reports();
        reports.push(SinkReport {
            name: "socket".into(),
            format: "json".into(),
            delivered: self.socket_stats.delivered.load(Ordering::Relaxed),
            dropped: self.socket_stats.dropped.load(Ordering::Relaxed),
            errors: 0,
            queue_depth: self.socket.len() as u64,
            queue_capacity: SOCKET_CHANNEL as u64,
        });
        reports
    }
}

/// Decisions go to the audit trail: every verdict but a plain allow, and tampering.
fn is_decision(record: &EventRecord) -> bool {
    matches!(record.kind.as_str(), "file" | "connect" | "send" | "exec" | "tamper") && record.verdict != "allow"
}

/// Converts the kernel's boot-clock times to wall-clock times: the offset
/// between the two clocks, read once per batch of events.
pub struct WallClock {
    realtime_minus_boot_ns: i128,
}

impl WallClock {
    pub fn now() -> WallClock {
        let boot = crate::loader::boot_time_ns() as i128;
        let real = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos() as i128;
        WallClock { realtime_minus_boot_ns: real - boot }
    }

    /// RFC 3339 (UTC, nanoseconds) of a boot-clock time.
    pub fn format(&self, boot_ns: u64) -> String {
        let unix_ns = (boot_ns as i128 + self.realtime_minus_boot_ns).max(0) as u128;
        let time = SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_ns as u64);
        humantime::format_rfc3339_nanos(time).to_string()
    }
}

fn wall_clock_now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_times_become_wall_clock_times() {
        let clock = WallClock::now();
        let now = clock.format(crate::loader::boot_time_ns());
        let parsed = humantime::parse_rfc3339(&now).unwrap();
        let skew = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(skew < Duration::from_secs(5), "{now}");
    }

    #[test]
    fn only_decisions_are_audited() {
        let deny = EventRecord { verdict: "deny".into(), ..EventRecord::from_daemon("file") };
        let allowed = EventRecord { verdict: "allow".into(), ..EventRecord::from_daemon("connect") };
        let start = EventRecord { verdict: "allow".into(), ..EventRecord::from_daemon("process_start") };
        assert!(is_decision(&deny));
        assert!(!is_decision(&allowed));
        assert!(!is_decision(&start));
    }
}
