//! NATS JetStream sink: every event is published to
//! `rtid.events.<node>.<kind>` and counted as delivered only once JetStream
//! has acknowledged storing it, so "delivered" means durable on the server.
//!
//! Nothing here may hold up the daemon or grow without bound, whatever the
//! server does:
//! - the client connects, and reconnects, in the background forever (capped
//!   exponential backoff); while it is not connected, events taken from the
//!   queue are dropped and counted at once instead of being held;
//! - at most `max_in_flight` publishes await their ack, each bounded by
//!   `publish_timeout`, and the client's own command buffer is bounded
//!   (`client_capacity`); a failed or late ack counts an error and a drop;
//! - the queue keeps being drained through all of this, so the pipeline's
//!   counters show any loss, and publishing resumes by itself once the
//!   server is back.
//!
//! The stream is looked up (and created, covering `rtid.events.>`, if it is
//! missing) on every (re)connection, since a server may come back without it.

use std::{sync::Arc, time::Duration};

use async_nats::{
    Client, ConnectError, ConnectOptions, Event,
    connection::State,
    jetstream::{
        self,
        context::{PublishError, PublishErrorKind},
        publish::PublishAck,
        stream,
    },
};
use futures_util::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use tokio::{sync::Notify, time::Instant};

use crate::events::pipeline::{Format, SharedRecord, SinkInput, SinkStats};

/// Every subject this sink publishes to starts with this.
pub const SUBJECT_PREFIX: &str = "rtid.events";

/// The subjects of a stream this sink creates.
const STREAM_SUBJECTS: &str = "rtid.events.>";

/// The limits that keep the sink bounded; tests shorten the waits.
#[derive(Clone, Debug)]
struct Tuning {
    /// Longest wait for handing a publish to the client, for its ack, and
    /// for a stream lookup.
    publish_timeout: Duration,
    /// Publishes awaiting their ack at once (pipelining keeps throughput up
    /// without a round trip per event).
    max_in_flight: usize,
    /// Commands the client buffers for its connection.
    client_capacity: usize,
    /// Longest pause between two connection attempts.
    max_backoff: Duration,
    /// Pause before a failed stream lookup is tried again.
    stream_retry: Duration,
    /// How often the client pings the server: a server that hangs without
    /// closing the connection is dropped after three unanswered pings.
    ping_interval: Duration,
    /// Publishes left unanswered before the client is replaced: the client
    /// keeps a small entry for every request until its reply comes, so one
    /// whose replies never came would otherwise grow for ever.
    max_unanswered: u64,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            publish_timeout: Duration::from_secs(5),
            max_in_flight: 256,
            client_capacity: 1024,
            max_backoff: Duration::from_secs(5),
            stream_retry: Duration::from_secs(5),
            ping_interval: Duration::from_secs(10),
            max_unanswered: 10_000,
        }
    }
}

/// Publishes the events of `input` to the JetStream `stream` at `url` as
/// node `node`, until the queue closes (the daemon dropped its end); then
/// waits (bounded) for the acks still outstanding.
pub async fn run(url: String, stream: String, node: String, input: SinkInput) {
    run_tuned(Tuning::default(), url, stream, node, input).await
}

async fn run_tuned(tuning: Tuning, url: String, stream: String, node: String, mut input: SinkInput) {
    let connected = Arc::new(Notify::new());
    let client = match connect(&url, &tuning, &connected, &input.stats).await {
        Ok(client) => client,
        Err(error) => {
            // Only a malformed address fails here (connecting itself is
            // retried in the background): nothing will ever be delivered.
            input.stats.error();
            tracing::error!(%url, %error, "nats sink: cannot use this server address; dropping every event");
            drop_all(&mut input).await;
            return;
        }
    };
    let sink = Sink {
        jetstream: jetstream_context(&client, &tuning),
        client,
        url,
        stream,
        node: subject_token(&node),
        format: input.format,
        stats: input.stats.clone(),
        tuning,
        connected,
        stream_check: None,
        stream_covers_subjects: false,
        unanswered: 0,
        failing: false,
    };
    sink.run(input).await;
}

/// A client that connects (and reconnects) in the background, forever.
async fn connect(
    url: &str,
    tuning: &Tuning,
    connected: &Arc<Notify>,
    stats: &Arc<SinkStats>,
) -> Result<Client, ConnectError> {
    let max_backoff = tuning.max_backoff;
    let (connected, stats) = (connected.clone(), stats.clone());
    ConnectOptions::new()
        .name("rtid")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .client_capacity(tuning.client_capacity)
        .request_timeout(Some(tuning.publish_timeout))
        .ping_interval(tuning.ping_interval)
        .reconnect_delay_callback(move |attempts| backoff(attempts, max_backoff))
        .event_callback(move |event| {
            on_connection_event(&event, &connected, &stats);
            async {}
        })
        .connect(url)
        .await
}

/// No pause before the first attempt, then 50 ms doubling up to `max`.
fn backoff(attempts: usize, max: Duration) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doublings = (attempts - 2).min(16) as u32;
    (Duration::from_millis(50) * 2u32.pow(doublings)).min(max)
}

/// Connection changes: count the failures, and have the stream checked after
/// every connection (the sink task does it; callbacks must not block).
fn on_connection_event(event: &Event, connected: &Notify, stats: &SinkStats) {
    match event {
        Event::Connected => {
            tracing::info!("nats sink: connected");
            connected.notify_one();
        }
        Event::Disconnected => {
            stats.error();
            tracing::warn!("nats sink: disconnected; dropping events until reconnected");
        }
        // A failed connection attempt (async-nats logs the reason).
        Event::ClientError(_) => stats.error(),
        _ => {}
    }
}

fn jetstream_context(client: &Client, tuning: &Tuning) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(tuning.publish_timeout)
        .max_ack_inflight(tuning.max_in_flight)
        // The sink itself never has more than max_in_flight outstanding, so
        // this never triggers; if it did, failing fast beats waiting for
        // permits only this task's pending acks could return.
        .backpressure_on_inflight(false)
        .build(client.clone())
}

async fn drop_all(input: &mut SinkInput) {
    while input.receiver.recv().await.is_some() {
        input.stats.dropped(1);
    }
}

type Ack = BoxFuture<'static, Result<PublishAck, PublishError>>;

struct Sink {
    client: Client,
    jetstream: jetstream::Context,
    url: String,
    stream: String,
    /// The node's subject token, already sanitised.
    node: String,
    format: Format,
    stats: Arc<SinkStats>,
    tuning: Tuning,
    /// Signalled on every (re)connection.
    connected: Arc<Notify>,
    /// When to look the stream up next, if it needs looking up.
    stream_check: Option<Instant>,
    /// The last lookup found a stream taking our subjects.
    stream_covers_subjects: bool,
    /// Publishes whose ack never came, since this client was made.
    unanswered: u64,
    /// In a run of failed publishes (logged once, not per event).
    failing: bool,
}

impl Sink {
    async fn run(mut self, mut input: SinkInput) {
        let connected = self.connected.clone();
        let mut in_flight: FuturesUnordered<Ack> = FuturesUnordered::new();
        loop {
            let stream_check = self.stream_check;
            tokio::select! {
                // Acks first: they free room for more publishes.
                biased;
                Some(acked) = in_flight.next() => self.account(acked),
                _ = connected.notified() => self.stream_check = Some(Instant::now()),
                _ = sleep_until(stream_check), if stream_check.is_some() => self.ensure_stream().await,
                record = input.receiver.recv(), if in_flight.len() < self.tuning.max_in_flight => match record {
                    Some(record) => self.publish(&record, &mut in_flight).await,
                    None => break,
                },
            }
        }
        // Each ack is bounded by its own timeout, so this ends.
        while let Some(acked) = in_flight.next().await {
            self.account(acked);
        }
    }

    /// Hands `record` to the client and queues the wait for its ack; drops it
    /// at once if the client is not connected.
    async fn publish(&mut self, record: &SharedRecord, in_flight: &mut FuturesUnordered<Ack>) {
        self.renew_client_if_leaking().await;
        if self.client.connection_state() != State::Connected {
            self.stats.dropped(1);
            return;
        }
        let subject = format!("{SUBJECT_PREFIX}.{}.{}", self.node, subject_token(&record.kind));
        let payload = self.format.encode(record);
        match self.jetstream.publish(subject, payload.into()).await {
            Ok(ack) => in_flight.push(ack.into_future()),
            Err(error) => self.failed(error),
        }
    }

    fn account(&mut self, acked: Result<PublishAck, PublishError>) {
        match acked {
            Ok(_) => {
                self.stats.delivered(1);
                if self.failing {
                    tracing::info!(stream = %self.stream, "nats sink: publishing again");
                }
                self.failing = false;
            }
            Err(error) => self.failed(error),
        }
    }

    fn failed(&mut self, error: PublishError) {
        self.stats.error();
        self.stats.dropped(1);
        match error.kind() {
            PublishErrorKind::TimedOut => self.unanswered += 1,
            // The stream went away (or the server came back without it).
            PublishErrorKind::StreamNotFound if self.stream_covers_subjects && self.stream_check.is_none() => {
                self.stream_check = Some(Instant::now() + self.tuning.stream_retry);
            }
            _ => {}
        }
        if !self.failing {
            tracing::warn!(stream = %self.stream, %error, "nats sink: publish failed; dropping events until it works again");
        }
        self.failing = true;
    }

    /// Looks the stream up, creating it if missing. A stream that exists
    /// with other subjects is left as it is (it is someone's deliberate
    /// setup); events no stream takes then fail and are counted.
    async fn ensure_stream(&mut self) {
        self.stream_check = None;
        if self.client.connection_state() != State::Connected {
            // The next connection asks again.
            return;
        }
        let config =
            stream::Config { name: self.stream.clone(), subjects: vec![STREAM_SUBJECTS.into()], ..Default::default() };
        match self.jetstream.get_or_create_stream(config).await {
            Ok(found) => {
                let subjects = &found.cached_info().config.subjects;
                self.stream_covers_subjects = subjects.iter().any(|pattern| covers_all_event_subjects(pattern));
                if !self.stream_covers_subjects {
                    tracing::warn!(stream = %self.stream, ?subjects, "nats sink: the stream exists but does not take {STREAM_SUBJECTS}; leaving it as it is");
                }
            }
            Err(error) => {
                self.stats.error();
                self.stream_check = Some(Instant::now() + self.tuning.stream_retry);
                tracing::warn!(stream = %self.stream, %error, "nats sink: cannot look up or create the stream; retrying");
            }
        }
    }

    /// Replaces the client once too many requests went unanswered (see
    /// `Tuning::max_unanswered`). Only while connected: the old client then
    /// shuts down as soon as its last handle goes (one that is reconnecting
    /// would not notice).
    async fn renew_client_if_leaking(&mut self) {
        if self.unanswered < self.tuning.max_unanswered || self.client.connection_state() != State::Connected {
            return;
        }
        self.unanswered = 0;
        match connect(&self.url, &self.tuning, &self.connected, &self.stats).await {
            Ok(client) => {
                tracing::info!(url = %self.url, "nats sink: replacing the client after many unanswered publishes");
                self.jetstream = jetstream_context(&client, &self.tuning);
                self.client = client;
            }
            Err(error) => tracing::warn!(url = %self.url, %error, "nats sink: cannot replace the client"),
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline).await;
    }
}

/// `raw` as one subject token: the separators and wildcards ('.', '*', '>')
/// and whitespace would change which subject (and stream) an event lands on.
fn subject_token(raw: &str) -> String {
    let token: String = raw
        .chars()
        .map(|c| if matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control() { '_' } else { c })
        .collect();
    if token.is_empty() { "_".into() } else { token }
}

/// Whether the subject pattern `pattern` matches every
/// `rtid.events.<node>.<kind>` (e.g. `rtid.events.>`, `rtid.*.*.*`, `>`).
fn covers_all_event_subjects(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (index, token) in tokens.iter().enumerate() {
        let fits = match index {
            _ if *token == ">" => return true,
            0 => *token == "rtid" || *token == "*",
            1 => *token == "events" || *token == "*",
            2 | 3 => *token == "*",
            _ => false,
        };
        if !fits {
            return false;
        }
    }
    tokens.len() == 4
}

#[cfg(test)]
mod tests {
    use std::{
        path::{Path, PathBuf},
        process::{Child, Command, Stdio},
        sync::atomic::Ordering,
    };

    use async_nats::jetstream::consumer::pull;

    use super::*;
    use crate::events::{
        pipeline::{Pipeline, sink_queue},
        record::EventRecord,
    };
    use crate::test_support::{TempDir, sample_event};

    /// A directory under the system temp dir, removed when dropped.
    /// A `nats-server -js` child on 127.0.0.1, killed when dropped (also when
    /// the test fails).
    struct NatsServer {
        child: Option<Child>,
        port: u16,
        store: PathBuf,
    }

    impl NatsServer {
        async fn start(store: &Path) -> NatsServer {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut server = NatsServer { child: None, port, store: store.to_path_buf() };
            server.restart().await;
            server
        }

        /// (Re)starts the server on the same port and storage, and waits
        /// until it accepts connections.
        async fn restart(&mut self) {
            let log = self.store.join("nats-server.log");
            let child = Command::new(nats_server_binary())
                .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
                .arg(&self.store)
                .arg("-l")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nats-server");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
                let exited = self.child.as_mut().unwrap().try_wait().unwrap();
                if exited.is_some() || Instant::now() > deadline {
                    panic!(
                        "nats-server did not start ({exited:?}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }

        fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// Freezes (`STOP`) or thaws (`CONT`) the server: a hung server that
        /// keeps its connections open.
        fn signal(&self, signal: &str) {
            let pid = self.child.as_ref().expect("server running").id().to_string();
            let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("run kill");
            assert!(status.success(), "kill -{signal} {pid}");
        }

        fn url(&self) -> String {
            format!("nats://127.0.0.1:{}", self.port)
        }
    }

    impl Drop for NatsServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// `nats-server` from PATH or where Debian puts it; a missing server
    /// fails the test (it must not pass silently untested).
    fn nats_server_binary() -> PathBuf {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from))
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
            .expect("nats-server not found: install the Debian package `nats-server` (apt-get install -y nats-server)")
    }

    fn record(seq: u64, kind: &str) -> SharedRecord {
        Arc::new(sample_event(seq, kind, "/x"))
    }

    fn quick() -> Tuning {
        Tuning {
            publish_timeout: Duration::from_secs(1),
            max_backoff: Duration::from_millis(200),
            stream_retry: Duration::from_millis(300),
            ..Tuning::default()
        }
    }

    struct Running {
        pipeline: Pipeline,
        stats: Arc<SinkStats>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Running {
        fn count(&self, counter: fn(&SinkStats) -> &std::sync::atomic::AtomicU64) -> u64 {
            counter(&self.stats).load(Ordering::Relaxed)
        }
    }

    fn start_sink(url: &str) -> Running {
        let (queue, input) = sink_queue("nats:RTID", Format::Json, 64);
        let stats = input.stats.clone();
        let mut pipeline = Pipeline::default();
        pipeline.add(queue);
        let task = tokio::spawn(run_tuned(quick(), url.into(), "RTID".into(), "node-a".into(), input));
        Running { pipeline, stats, task }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The test's own view of the server.
    async fn reader(url: &str) -> jetstream::Context {
        jetstream::new(async_nats::connect(url).await.expect("connect the test client"))
    }

    /// Waits until the sink has created the stream (so it is connected).
    async fn wait_for_stream(js: &jetstream::Context) -> jetstream::stream::Stream {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(stream) = js.get_stream("RTID").await {
                return stream;
            }
            assert!(Instant::now() < deadline, "the sink did not create the stream");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every message in the stream: (subject, event).
    async fn read_all(stream: &jetstream::stream::Stream) -> Vec<(String, EventRecord)> {
        let consumer = stream
            .create_consumer(pull::Config { name: Some(format!("check-{}", std::process::id())), ..Default::default() })
            .await
            .expect("create a consumer");
        let mut messages =
            consumer.fetch().max_messages(1000).expires(Duration::from_secs(1)).messages().await.unwrap();
        let mut read = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.unwrap();
            read.push((message.subject.to_string(), serde_json::from_slice(&message.payload).unwrap()));
        }
        stream.delete_consumer(&format!("check-{}", std::process::id())).await.unwrap();
        read
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_reach_the_stream_under_their_subjects_and_are_acked() {
        let dir = TempDir::new("nats-sink-publish");
        let server = NatsServer::start(&dir.0).await;
        let sink = start_sink(&server.url());
        let js = reader(&server.url()).await;
        let stream = wait_for_stream(&js).await;
        assert_eq!(stream.cached_info().config.subjects, [STREAM_SUBJECTS]);

        for seq in 0..5 {
            sink.pipeline.publish(&record(seq, "file"));
        }
        wait_for("5 acks", || sink.count(|s| &s.delivered) == 5).await;
        let read = read_all(&stream).await;
        assert_eq!(read.len(), 5);
        for (seq, (subject, event)) in read.iter().enumerate() {
            assert_eq!(subject, "rtid.events.node-a.file");
            assert_eq!(event, &*record(seq as u64, "file"));
        }
        assert_eq!((sink.count(|s| &s.dropped), sink.count(|s| &s.errors)), (0, 0));

        // A closed queue ends the sink.
        drop(sink.pipeline);
        tokio::time::timeout(Duration::from_secs(5), sink.task).await.expect("the sink ends").unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_server_costs_counted_drops_and_delivery_resumes_when_it_is_back() {
        let dir = TempDir::new("nats-sink-restart");
        let mut server = NatsServer::start(&dir.0).await;
        let sink = start_sink(&server.url());
        wait_for_stream(&reader(&server.url()).await).await;
        for seq in 0..3 {
            sink.pipeline.publish(&record(seq, "file"));
        }
        wait_for("the first acks", || sink.count(|s| &s.delivered) == 3).await;

        server.kill();
        for seq in 100..150 {
            sink.pipeline.publish(&record(seq, "file"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Every event is accounted for and the queue is drained: the sink
        // neither hangs nor holds events back.
        wait_for("all 53 accounted for", || sink.count(|s| &s.delivered) + sink.count(|s| &s.dropped) == 53).await;
        assert_eq!(sink.count(|s| &s.delivered), 3);
        assert!(sink.count(|s| &s.errors) >= 1);
        assert_eq!(sink.pipeline.reports()[0].queue_depth, 0);
        assert!(!sink.task.is_finished());

        server.restart().await;
        // Offer events until one gets through (the client reconnects with backoff).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seq = 200;
        while sink.count(|s| &s.delivered) == 3 {
            assert!(Instant::now() < deadline, "no delivery after the server came back");
            sink.pipeline.publish(&record(seq, "file"));
            seq += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let delivered = sink.count(|s| &s.delivered);
        for seq in 1000..1005 {
            sink.pipeline.publish(&record(seq, "exec"));
        }
        wait_for("the acks after the restart", || sink.count(|s| &s.delivered) == delivered + 5).await;

        let js = reader(&server.url()).await;
        let read = read_all(&js.get_stream("RTID").await.unwrap()).await;
        let seqs: Vec<u64> = read.iter().map(|(_, event)| event.seq).collect();
        assert_eq!(&seqs[..3], [0, 1, 2]);
        assert_eq!(&seqs[seqs.len() - 5..], [1000, 1001, 1002, 1003, 1004]);
        assert!(read.iter().rev().take(5).all(|(subject, _)| subject == "rtid.events.node-a.exec"));
        // Every acked event is stored (a few unacked ones may be too).
        assert!(read.len() as u64 >= sink.count(|s| &s.delivered));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_server_times_acks_out_and_the_queue_keeps_draining() {
        let dir = TempDir::new("nats-sink-hung");
        let server = NatsServer::start(&dir.0).await;
        let sink = start_sink(&server.url());
        wait_for_stream(&reader(&server.url()).await).await;
        sink.pipeline.publish(&record(0, "file"));
        wait_for("the first ack", || sink.count(|s| &s.delivered) == 1).await;

        // Still connected, so these are sent, and their acks never come.
        server.signal("STOP");
        for seq in 1..21 {
            sink.pipeline.publish(&record(seq, "file"));
        }
        wait_for("the acks to time out", || sink.count(|s| &s.dropped) == 20).await;
        assert!(sink.count(|s| &s.errors) >= 20);
        assert_eq!(sink.count(|s| &s.delivered), 1);
        assert_eq!(sink.pipeline.reports()[0].queue_depth, 0);

        server.signal("CONT");
        sink.pipeline.publish(&record(21, "file"));
        wait_for("delivery after the thaw", || sink.count(|s| &s.delivered) == 2).await;
        assert!(!sink.task.is_finished());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_with_other_subjects_is_left_alone_and_failures_are_counted() {
        let dir = TempDir::new("nats-sink-foreign");
        let server = NatsServer::start(&dir.0).await;
        let js = reader(&server.url()).await;
        js.create_stream(stream::Config {
            name: "RTID".into(),
            subjects: vec!["other.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        let sink = start_sink(&server.url());
        // Retry until the sink is connected and the publish reaches the server.
        wait_for("a failed publish", || {
            sink.pipeline.publish(&record(0, "file"));
            sink.count(|s| &s.errors) > 0
        })
        .await;
        wait_for("every event accounted for", || {
            let report = &sink.pipeline.reports()[0];
            report.queue_depth == 0 && sink.count(|s| &s.dropped) > 0
        })
        .await;
        assert_eq!(sink.count(|s| &s.delivered), 0);
        let stream = js.get_stream("RTID").await.unwrap();
        assert_eq!(stream.cached_info().config.subjects, ["other.>"]);
        assert!(!sink.task.is_finished());
    }

    #[test]
    fn subject_tokens_cannot_change_the_subject() {
        assert_eq!(subject_token("node-a"), "node-a");
        assert_eq!(subject_token("a.b*c>d e\tf"), "a_b_c_d_e_f");
        assert_eq!(subject_token(""), "_");
    }

    #[test]
    fn stream_patterns_that_cover_our_subjects() {
        for pattern in ["rtid.events.>", "rtid.>", ">", "*.events.*.*", "rtid.events.*.*"] {
            assert!(covers_all_event_subjects(pattern), "{pattern}");
        }
        for pattern in ["rtid.events.node-a.>", "rtid.events.*", "rtid.events.*.*.*", "other.>", "rtid.events"] {
            assert!(!covers_all_event_subjects(pattern), "{pattern}");
        }
    }

    #[test]
    fn backoff_starts_at_once_grows_and_is_capped() {
        let max = Duration::from_secs(5);
        assert_eq!(backoff(1, max), Duration::ZERO);
        assert_eq!(backoff(2, max), Duration::from_millis(50));
        assert_eq!(backoff(3, max), Duration::from_millis(100));
        assert_eq!(backoff(1000, max), max);
    }
}
