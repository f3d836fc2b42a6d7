//! From the daemon to the sinks: every event is offered to every sink's own
//! bounded queue and never waited for. A sink that is slow or gone loses what
//! its queue cannot hold, and each loss is counted against that sink, so the
//! kernel ring, enforcement and the other sinks never wait on it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::record::EventRecord;

/// One event as every sink sees it (shared, never copied per sink).
pub type SharedRecord = Arc<EventRecord>;

/// How a sink writes events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// rtid's own JSON (`schema: rtid.event/v1`), one object per line.
    #[default]
    Json,
    /// OCSF 1.x classes (File System, Network, Process Activity; Detection Finding).
    Ocsf,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Ocsf => "ocsf",
        }
    }

    /// `record` as one line in this format, without the newline.
    pub fn encode(self, record: &EventRecord) -> Vec<u8> {
        let encoded = match self {
            Format::Json => serde_json::to_vec(record),
            Format::Ocsf => serde_json::to_vec(&super::ocsf::to_ocsf(record)),
        };
        // Serialising plain strings and numbers cannot fail.
        encoded.unwrap_or_default()
    }
}

/// What one sink did with what it was offered; read by status and /metrics.
#[derive(Debug, Default)]
pub struct SinkStats {
    /// Written out (to the file, the server, a client).
    pub delivered: AtomicU64,
    /// Lost: its queue was full, its peer was gone, or a write failed.
    pub dropped: AtomicU64,
    /// Write or connection failures (each also drops what it could not write).
    pub errors: AtomicU64,
}

impl SinkStats {
    pub fn delivered(&self, count: u64) {
        self.delivered.fetch_add(count, Ordering::Relaxed);
    }

    pub fn dropped(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A sink's numbers at one moment.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SinkReport {
    pub name: String,
    pub format: String,
    pub delivered: u64,
    pub dropped: u64,
    pub errors: u64,
    pub queue_depth: u64,
    pub queue_capacity: u64,
}

/// The producer's end of one sink.
pub struct SinkQueue {
    pub name: String,
    pub format: Format,
    pub stats: Arc<SinkStats>,
    sender: mpsc::Sender<SharedRecord>,
    /// Queue depth of fan-out sinks (HTTP clients) beyond the main queue.
    extra_depth: Option<Arc<AtomicU64>>,
}

/// The consumer's end, handed to the sink's task.
pub struct SinkInput {
    pub receiver: mpsc::Receiver<SharedRecord>,
    pub stats: Arc<SinkStats>,
    pub format: Format,
}

/// A bounded queue for a new sink named `name`.
pub fn sink_queue(name: &str, format: Format, capacity: usize) -> (SinkQueue, SinkInput) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let stats = Arc::new(SinkStats::default());
    (
        SinkQueue { name: name.to_string(), format, stats: stats.clone(), sender, extra_depth: None },
        SinkInput { receiver, stats, format },
    )
}

impl SinkQueue {
    /// Counts `depth` (updated by the sink) into this sink's queue depth.
    pub fn with_extra_depth(mut self, depth: Arc<AtomicU64>) -> SinkQueue {
        self.extra_depth = Some(depth);
        self
    }

    fn report(&self) -> SinkReport {
        let capacity = self.sender.max_capacity() as u64;
        let extra = self.extra_depth.as_ref().map_or(0, |depth| depth.load(Ordering::Relaxed));
        SinkReport {
            name: self.name.clone(),
            format: self.format.name().into(),
            delivered: self.stats.delivered.load(Ordering::Relaxed),
            dropped: self.stats.dropped.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
            queue_depth: capacity - self.sender.capacity() as u64 + extra,
            queue_capacity: capacity,
        }
    }
}

/// Every sink in force.
#[derive(Default)]
pub struct Pipeline {
    sinks: Vec<SinkQueue>,
}

impl Pipeline {
    pub fn add(&mut self, sink: SinkQueue) {
        self.sinks.push(sink);
    }

    /// Offers `record` to every sink without waiting: a full or closed queue
    /// counts a drop for that sink and nothing else.
    pub fn publish(&self, record: &SharedRecord) {
        for sink in &self.sinks {
            if sink.sender.try_send(record.clone()).is_err() {
                sink.stats.dropped(1);
            }
        }
    }

    pub fn reports(&self) -> Vec<SinkReport> {
        self.sinks.iter().map(SinkQueue::report).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SharedRecord {
        Arc::new(crate::test_support::sample_event(0, "file", "/x"))
    }

    #[test]
    fn a_full_sink_counts_its_drops_and_the_others_still_receive() {
        let mut pipeline = Pipeline::default();
        let (slow, _slow_input) = sink_queue("slow", Format::Json, 2);
        let (fast, mut fast_input) = sink_queue("fast", Format::Json, 16);
        pipeline.add(slow);
        pipeline.add(fast);
        for _ in 0..5 {
            pipeline.publish(&record());
        }
        let reports = pipeline.reports();
        assert_eq!((reports[0].dropped, reports[0].queue_depth), (3, 2));
        assert_eq!((reports[1].dropped, reports[1].queue_depth), (0, 5));
        let mut received = 0;
        while fast_input.receiver.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, 5);
    }

    #[test]
    fn a_closed_sink_counts_drops() {
        let mut pipeline = Pipeline::default();
        let (gone, input) = sink_queue("gone", Format::Json, 4);
        drop(input);
        pipeline.add(gone);
        pipeline.publish(&record());
        assert_eq!(pipeline.reports()[0].dropped, 1);
    }
}
