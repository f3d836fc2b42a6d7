//! The daemon's HTTP endpoint (`http.listen`): `GET /metrics` for scrapers,
//! `GET /healthz`, and, when an `http` sink is configured, `GET /events`, a
//! stream of decision events behind a bearer token.
//!
//! `/events` is a fan-out sink: one task reads the sink's queue and offers
//! each record to every connected client's own bounded queue without waiting.
//! A client that reads slowly (or not at all) blocks only its own connection:
//! its queue fills and what it cannot take is counted as dropped, while the
//! other clients, the other sinks and enforcement carry on.
//!
//! Events are written as newline-delimited JSON (`application/x-ndjson`), or
//! as server-sent events (`text/event-stream`) when the client's Accept header
//! asks for them or the query says `?format=sse`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Body, Bytes, Frame, Incoming},
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc::{self, error::TrySendError},
    task::JoinSet,
};

use crate::events::pipeline::{Format, SharedRecord, SinkInput, SinkStats};

/// Renders the /metrics page; called once per scrape.
pub type MetricsPage = Arc<dyn Fn() -> String + Send + Sync>;

/// The `http` sink: what `GET /events` streams, and to whom.
pub struct HttpEvents {
    /// The bearer token clients must present (see [`read_token`]).
    pub token: String,
    /// The sink's queue from the pipeline.
    pub input: SinkInput,
    /// Records each client's queue holds before that client loses events.
    pub client_queue: usize,
    /// Sum of the clients' queue lengths; give the same `Arc` to
    /// `SinkQueue::with_extra_depth` so reports include it.
    pub depth: Arc<AtomicU64>,
}

const NDJSON: &str = "application/x-ndjson";
const EVENT_STREAM: &str = "text/event-stream";
const TEXT: &str = "text/plain; charset=utf-8";

/// A slow peer may hold a connection open this long without sending its
/// request head; bounds the connections an idle attacker can pin.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Records ready at once are written in one body frame up to about this
/// size, so a busy stream costs one write per batch rather than per event.
const FRAME_BYTES: usize = 64 * 1024;

/// Records the fan-out task takes from the sink's queue per turn.
const FAN_OUT_BATCH: usize = 256;

/// The bearer token in `path`, trimmed of surrounding whitespace (files
/// usually end with a newline). An empty file is refused: it would make the
/// empty string the password.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|error| format!("token file {}: {error}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {}: empty", path.display()));
    }
    Ok(token.to_string())
}

/// Answers HTTP/1.1 on `listener` until the future is dropped. Dropping it
/// also ends every connection and the fan-out task (they live in its
/// `JoinSet`). Only returns on a failure to accept that is not transient.
pub async fn serve(listener: TcpListener, metrics: MetricsPage, events: Option<HttpEvents>) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    let endpoint = Arc::new(Endpoint::new(metrics, events, &mut tasks));
    accept_loop(listener, endpoint, tasks).await
}

async fn accept_loop(listener: TcpListener, endpoint: Arc<Endpoint>, mut tasks: JoinSet<()>) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tasks.spawn(serve_connection(stream, peer, endpoint.clone()));
                }
                Err(error) if is_transient(&error) => {
                    // Out of descriptors or the peer gave up: wait rather than spin.
                    tracing::warn!(%error, "http: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(anyhow::Error::new(error).context("http: accept")),
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(error.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut)
        || matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, endpoint: Arc<Endpoint>) {
    // Events are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request: Request<Incoming>| {
        std::future::ready(Ok::<_, Infallible>(endpoint.respond(&request)))
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    // hyper itself answers malformed requests (400, 431, ...) before giving up.
    if let Err(error) = connection.await {
        tracing::debug!(%peer, %error, "http: connection ended");
    }
}

type ResponseBody = BoxBody<Bytes, Infallible>;

/// What the routes share.
struct Endpoint {
    metrics: MetricsPage,
    events: Option<EventsRoute>,
}

struct EventsRoute {
    token: String,
    hub: Arc<Hub>,
}

impl Endpoint {
    fn new(metrics: MetricsPage, events: Option<HttpEvents>, tasks: &mut JoinSet<()>) -> Endpoint {
        let events = events.map(|events| {
            let hub = Arc::new(Hub::new(&events));
            tasks.spawn(fan_out(events.input.receiver, hub.clone()));
            EventsRoute { token: events.token, hub }
        });
        Endpoint { metrics, events }
    }

    fn respond(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        match request.uri().path() {
            "/metrics" => {
                read_only(request, || text_response(StatusCode::OK, crate::metrics::CONTENT_TYPE, (self.metrics)()))
            }
            "/healthz" => read_only(request, || text_response(StatusCode::OK, TEXT, "ok\n".into())),
            "/events" => match &self.events {
                Some(events) if request.method() == Method::GET => events.respond(request),
                Some(_) => method_not_allowed("GET"),
                None => not_found(),
            },
            _ => not_found(),
        }
    }
}

/// GET (or HEAD, whose body hyper leaves out) for a page without side effects.
fn read_only(request: &Request<Incoming>, page: impl FnOnce() -> Response<ResponseBody>) -> Response<ResponseBody> {
    match *request.method() {
        Method::GET | Method::HEAD => page(),
        _ => method_not_allowed("GET, HEAD"),
    }
}

impl EventsRoute {
    fn respond(&self, request: &Request<Incoming>) -> Response<ResponseBody> {
        if let Err(challenge) = self.authorise(request) {
            let mut response = text_response(StatusCode::UNAUTHORIZED, TEXT, "a bearer token is required\n".into());
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            return response;
        }
        let framing = match Framing::requested(request) {
            Ok(framing) => framing,
            Err(message) => return text_response(StatusCode::BAD_REQUEST, TEXT, message),
        };
        let Some(stream) = self.hub.subscribe(framing) else {
            return text_response(StatusCode::SERVICE_UNAVAILABLE, TEXT, "the event stream has ended\n".into());
        };
        let mut response = Response::new(stream.boxed());
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(framing.content_type()));
        // Proxies and browsers must not hold back or replay a live stream.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// Ok, or the `WWW-Authenticate` challenge to answer with (RFC 6750).
    fn authorise(&self, request: &Request<Incoming>) -> Result<(), &'static str> {
        match bearer_token(request) {
            None => Err("Bearer"),
            Some(presented) if same_secret(presented, self.token.as_bytes()) => Ok(()),
            Some(_) => Err("Bearer error=\"invalid_token\""),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme matched
/// without regard to case, as RFC 7235 says).
fn bearer_token(request: &Request<Incoming>) -> Option<&[u8]> {
    let value = request.headers().get(header::AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|byte| *byte == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(rest.trim_ascii())
}

/// Compares without stopping at the first difference, so the time taken does
/// not tell an attacker how much of a guess was right; it depends only on the
/// length of the real token.
fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    let mut difference = presented.len() ^ expected.len();
    for (index, byte) in expected.iter().enumerate() {
        let other = presented.get(index).copied().unwrap_or(0);
        // black_box keeps the optimiser from turning the fold into an early exit.
        difference |= std::hint::black_box(usize::from(byte ^ other));
    }
    difference == 0
}

/// How events are laid out on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// One encoded record per line.
    Ndjson,
    /// `event: <kind>`, `id: <seq>`, `data: <record>`, blank line.
    Sse,
}

impl Framing {
    /// `?format=sse|ndjson` wins; otherwise SSE when Accept names it.
    fn requested(request: &Request<Incoming>) -> Result<Framing, String> {
        let asked = request
            .uri()
            .query()
            .into_iter()
            .flat_map(|query| query.split('&'))
            .find_map(|pair| pair.strip_prefix("format="));
        match asked {
            Some("sse") => Ok(Framing::Sse),
            Some("ndjson") => Ok(Framing::Ndjson),
            Some(other) => Err(format!("format={other}: expected sse or ndjson\n")),
            None if accepts_event_stream(request) => Ok(Framing::Sse),
            None => Ok(Framing::Ndjson),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Framing::Ndjson => NDJSON,
            Framing::Sse => EVENT_STREAM,
        }
    }

    /// Appends `record`, encoded in `format`, to `out`.
    fn write(self, record: &SharedRecord, format: Format, out: &mut Vec<u8>) {
        match self {
            Framing::Ndjson => {
                out.extend(format.encode(record));
                out.push(b'\n');
            }
            Framing::Sse => {
                out.extend(b"event: ");
                // A line break in the field would end it early and forge another.
                out.extend(record.kind.bytes().filter(|byte| !matches!(byte, b'\r' | b'\n')));
                out.extend(format!("\nid: {}\ndata: ", record.seq).bytes());
                // JSON encoders escape line breaks, so the record is one data line.
                out.extend(format.encode(record));
                out.extend(b"\n\n");
            }
        }
    }
}

fn accepts_event_stream(request: &Request<Incoming>) -> bool {
    request.headers().get_all(header::ACCEPT).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value.split(',').any(|range| {
                let media = range.split(';').next().unwrap_or("").trim();
                media.eq_ignore_ascii_case(EVENT_STREAM)
            })
        })
    })
}

/// The connected `/events` clients, each with its own bounded queue.
struct Hub {
    /// None once the sink's queue has closed (the daemon is stopping).
    clients: Mutex<Option<Vec<mpsc::Sender<SharedRecord>>>>,
    client_queue: usize,
    format: Format,
    stats: Arc<SinkStats>,
    depth: Arc<AtomicU64>,
}

impl Hub {
    fn new(events: &HttpEvents) -> Hub {
        Hub {
            clients: Mutex::new(Some(Vec::new())),
            client_queue: events.client_queue.max(1),
            format: events.input.format,
            stats: events.input.stats.clone(),
            depth: events.depth.clone(),
        }
    }

    fn clients(&self) -> MutexGuard<'_, Option<Vec<mpsc::Sender<SharedRecord>>>> {
        // The lock guards a plain list that no panic can leave half-changed.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new client's stream, from the next record on; None once the sink has ended.
    fn subscribe(&self, framing: Framing) -> Option<EventStream> {
        let (sender, receiver) = mpsc::channel(self.client_queue);
        self.clients().as_mut()?.push(sender);
        Some(EventStream {
            receiver,
            framing,
            format: self.format,
            stats: self.stats.clone(),
            depth: self.depth.clone(),
        })
    }

    /// Offers `records` to every client without waiting: a full queue counts
    /// a drop for that client; a client whose connection is gone is forgotten.
    ///
    /// With no client connected the records are consumed and counted neither
    /// delivered nor dropped: nobody asked for them, so nothing was lost.
    /// Each client's copy counts on its own, so `delivered` and `dropped` add
    /// up over clients (two clients, one record: two deliveries).
    fn offer(&self, records: &[SharedRecord]) {
        let mut clients = self.clients();
        let Some(clients) = clients.as_mut() else { return };
        clients.retain(|client| {
            for record in records {
                // Counted before the send so the client's matching decrement
                // can never take the figure below zero.
                self.depth.fetch_add(1, Ordering::Relaxed);
                match client.try_send(record.clone()) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        self.depth.fetch_sub(1, Ordering::Relaxed);
                        self.stats.dropped(1);
                    }
                    Err(TrySendError::Closed(_)) => {
                        self.depth.fetch_sub(1, Ordering::Relaxed);
                        return false;
                    }
                }
            }
            true
        });
    }

    /// The sink's queue has closed: end every client's stream (dropping the
    /// senders lets each body finish once its queue is written).
    fn close(&self) {
        self.clients().take();
    }

    #[cfg(test)]
    fn client_count(&self) -> usize {
        self.clients().as_ref().map_or(0, Vec::len)
    }
}

/// Reads the sink's queue and hands every record to the hub until the
/// pipeline drops its end.
async fn fan_out(mut receiver: mpsc::Receiver<SharedRecord>, hub: Arc<Hub>) {
    let mut batch = Vec::with_capacity(FAN_OUT_BATCH);
    while receiver.recv_many(&mut batch, FAN_OUT_BATCH).await > 0 {
        hub.offer(&batch);
        batch.clear();
    }
    hub.close();
}

/// One client's response body: its queue, written as it fills. hyper polls it
/// only when the connection can take more, so a client that stops reading
/// leaves its records in its own queue (where the hub counts what overflows).
struct EventStream {
    receiver: mpsc::Receiver<SharedRecord>,
    framing: Framing,
    format: Format,
    stats: Arc<SinkStats>,
    depth: Arc<AtomicU64>,
}

impl EventStream {
    /// Records taken from the queue leave the depth; handing them to hyper
    /// is as close to "delivered" as a server can see.
    fn taken(&self, count: u64) {
        self.depth.fetch_sub(count, Ordering::Relaxed);
        self.stats.delivered(count);
    }
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let Some(first) = ready!(this.receiver.poll_recv(context)) else {
            return Poll::Ready(None);
        };
        let mut frame = Vec::new();
        this.framing.write(&first, this.format, &mut frame);
        let mut count = 1;
        while frame.len() < FRAME_BYTES {
            let Ok(record) = this.receiver.try_recv() else { break };
            this.framing.write(&record, this.format, &mut frame);
            count += 1;
        }
        this.taken(count);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(frame)))))
    }
}

impl Drop for EventStream {
    /// The connection is gone: what its queue still holds will never be
    /// written, so it counts as dropped. Closing first stops the hub adding
    /// more while the queue is emptied, so the depth comes out exact.
    fn drop(&mut self) {
        self.receiver.close();
        let mut left = 0;
        while self.receiver.try_recv().is_ok() {
            left += 1;
        }
        self.depth.fetch_sub(left, Ordering::Relaxed);
        self.stats.dropped(left);
    }
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn not_found() -> Response<ResponseBody> {
    text_response(StatusCode::NOT_FOUND, TEXT, "not found\n".into())
}

fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = text_response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n".into());
    response.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    use super::*;
    use crate::events::pipeline::{Pipeline, SinkQueue, sink_queue};
    use crate::events::record::EventRecord;

    const TOKEN: &str = "s3cret-token";

    fn record(seq: u64, kind: &str, payload: usize) -> SharedRecord {
        let mut record: EventRecord = serde_json::from_value(serde_json::json!({
            "schema": "rtid.event/v1", "kind": kind, "time_boot_ns": 1, "pid": 1, "tgid": 1,
            "parent_tgid": 0, "uid": 0, "comm": "cat", "process_key": "1:1", "identity_id": 1,
            "identity": "coder", "delegation_chain": null, "verdict": "deny", "outcome": "denied",
            "errno": 13, "decision": "rule", "rule_id": null, "rule": null, "backend": "lsm",
            "access": ["read"], "path": "/x", "address": null, "port": null, "protocol": null,
            "flags": [], "generation": 1, "related_tgid": null
        }))
        .unwrap();
        record.seq = seq;
        record.path = Some(format!("/{}", "p".repeat(payload)));
        Arc::new(record)
    }

    /// A running endpoint on 127.0.0.1 with an events sink.
    struct Server {
        address: SocketAddr,
        pipeline: Pipeline,
        stats: Arc<SinkStats>,
        depth: Arc<AtomicU64>,
        hub: Arc<Hub>,
        _task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(main_queue: usize, client_queue: usize) -> Server {
            let (queue, input): (SinkQueue, SinkInput) = sink_queue("http", Format::Json, main_queue);
            let depth = Arc::new(AtomicU64::new(0));
            let stats = input.stats.clone();
            let mut pipeline = Pipeline::default();
            pipeline.add(queue.with_extra_depth(depth.clone()));
            let events = HttpEvents { token: TOKEN.into(), input, client_queue, depth: depth.clone() };
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let mut tasks = JoinSet::new();
            let endpoint = Arc::new(Endpoint::new(metrics_page(), Some(events), &mut tasks));
            let hub = endpoint.events.as_ref().unwrap().hub.clone();
            let task = tokio::spawn(async move {
                accept_loop(listener, endpoint, tasks).await.unwrap();
            });
            Server { address, pipeline, stats, depth, hub, _task: task }
        }

        fn publish(&self, record: SharedRecord) {
            self.pipeline.publish(&record);
        }

        fn delivered(&self) -> u64 {
            self.stats.delivered.load(Ordering::Relaxed)
        }

        fn dropped(&self) -> u64 {
            self.stats.dropped.load(Ordering::Relaxed)
        }

        fn depth(&self) -> u64 {
            self.depth.load(Ordering::Relaxed)
        }

        /// Waits until `clients` clients are subscribed.
        async fn wait_for_clients(&self, clients: usize) {
            eventually("client count", || self.hub.client_count() == clients).await;
        }
    }

    fn metrics_page() -> MetricsPage {
        Arc::new(|| {
            let snapshot = crate::metrics::MetricsSnapshot {
                node: "node-a".into(),
                events: vec![(("file".into(), "deny".into()), 1)],
                ..Default::default()
            };
            crate::metrics::render(&snapshot)
        })
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A raw HTTP/1.1 client: the request is written as given.
    async fn send(address: SocketAddr, request: &str) -> BufReader<TcpStream> {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        BufReader::new(stream)
    }

    fn events_request(extra_headers: &str) -> String {
        format!("GET /events HTTP/1.1\r\nHost: test\r\n{extra_headers}\r\n")
    }

    fn authorised(extra_headers: &str) -> String {
        events_request(&format!("Authorization: Bearer {TOKEN}\r\n{extra_headers}"))
    }

    /// Status code and lower-cased headers of a response.
    async fn read_head(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
        let mut status_line = String::new();
        reader.read_line(&mut status_line).await.unwrap();
        let status = status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                return (status, headers);
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
    }

    fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
        headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    /// A whole response to a request sent with `Connection: close`.
    async fn fetch(address: SocketAddr, request: &str) -> (u16, Vec<(String, String)>, String) {
        let mut reader = send(address, request).await;
        let (status, headers) = read_head(&mut reader).await;
        let mut body = String::new();
        reader.read_to_string(&mut body).await.unwrap();
        (status, headers, body)
    }

    /// Reads a chunked (HTTP/1.1 streaming) body line by line.
    struct Lines {
        reader: BufReader<TcpStream>,
        pending: Vec<u8>,
    }

    impl Lines {
        fn new(reader: BufReader<TcpStream>) -> Lines {
            Lines { reader, pending: Vec::new() }
        }

        async fn next_line(&mut self) -> String {
            loop {
                if let Some(end) = self.pending.iter().position(|byte| *byte == b'\n') {
                    let line: Vec<u8> = self.pending.drain(..=end).collect();
                    return String::from_utf8(line[..end].to_vec()).unwrap();
                }
                self.read_chunk().await;
            }
        }

        async fn read_chunk(&mut self) {
            let mut size_line = String::new();
            self.reader.read_line(&mut size_line).await.unwrap();
            let size =
                usize::from_str_radix(size_line.trim(), 16).unwrap_or_else(|_| panic!("chunk size {size_line:?}"));
            assert!(size > 0, "the stream ended");
            let start = self.pending.len();
            self.pending.resize(start + size, 0);
            self.reader.read_exact(&mut self.pending[start..]).await.unwrap();
            let mut crlf = [0; 2];
            self.reader.read_exact(&mut crlf).await.unwrap();
            assert_eq!(&crlf, b"\r\n");
        }
    }

    /// Subscribes a client and returns its line reader once the stream is open.
    async fn subscribe(server: &Server, extra_headers: &str) -> (Vec<(String, String)>, Lines) {
        let mut reader = send(server.address, &authorised(extra_headers)).await;
        let (status, headers) = read_head(&mut reader).await;
        assert_eq!(status, 200);
        (headers, Lines::new(reader))
    }

    #[test]
    fn tokens_are_read_trimmed_and_an_empty_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("rtid-http-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("token");
        std::fs::write(&good, "  abc123\n").unwrap();
        assert_eq!(read_token(&good).unwrap(), "abc123");
        let empty = dir.join("empty");
        std::fs::write(&empty, " \n").unwrap();
        assert!(read_token(&empty).unwrap_err().contains(&empty.display().to_string()));
        let missing = dir.join("missing");
        assert!(read_token(&missing).unwrap_err().contains(&missing.display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"abcd", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }

    #[tokio::test]
    async fn events_need_the_right_bearer_token() {
        let server = Server::start(64, 16).await;
        let close = "Connection: close\r\n";
        let (status, headers, _) = fetch(server.address, &events_request(close)).await;
        assert_eq!((status, header(&headers, "www-authenticate")), (401, Some("Bearer")));
        let wrong = format!("Authorization: Bearer not-{TOKEN}\r\n{close}");
        let (status, headers, _) = fetch(server.address, &events_request(&wrong)).await;
        assert_eq!(status, 401);
        assert!(header(&headers, "www-authenticate").unwrap().starts_with("Bearer"));
        let basic = format!("Authorization: Basic {TOKEN}\r\n{close}");
        assert_eq!(fetch(server.address, &events_request(&basic)).await.0, 401);
        assert_eq!(server.hub.client_count(), 0, "refused clients are not subscribed");
        // The scheme is case-insensitive.
        let mut reader = send(server.address, &events_request(&format!("Authorization: bearer {TOKEN}\r\n"))).await;
        assert_eq!(read_head(&mut reader).await.0, 200);
    }

    #[tokio::test]
    async fn ndjson_clients_receive_records_in_order() {
        let server = Server::start(1024, 1024).await;
        let (headers, mut lines) = subscribe(&server, "").await;
        assert_eq!(header(&headers, "content-type"), Some(NDJSON));
        server.wait_for_clients(1).await;
        for seq in 1..=500 {
            server.publish(record(seq, "file", 8));
        }
        for seq in 1..=500 {
            let line = lines.next_line().await;
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(value["seq"], seq);
            assert_eq!(line.as_bytes(), Format::Json.encode(&record(seq, "file", 8)));
        }
        eventually("delivery counted", || server.delivered() == 500).await;
        assert_eq!((server.dropped(), server.depth()), (0, 0));
    }

    #[tokio::test]
    async fn sse_is_chosen_by_accept_or_query_and_framed_per_event() {
        let server = Server::start(64, 64).await;
        let (headers, mut by_accept) = subscribe(&server, "Accept: text/html, text/event-stream;q=0.9\r\n").await;
        assert_eq!(header(&headers, "content-type"), Some(EVENT_STREAM));
        let mut reader = send(
            server.address,
            &format!("GET /events?format=sse HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"),
        )
        .await;
        let (status, headers) = read_head(&mut reader).await;
        assert_eq!((status, header(&headers, "content-type")), (200, Some(EVENT_STREAM)));
        let mut by_query = Lines::new(reader);
        server.wait_for_clients(2).await;
        server.publish(record(7, "connect", 4));
        server.publish(record(8, "file", 4));
        for client in [&mut by_accept, &mut by_query] {
            for (seq, kind) in [(7, "connect"), (8, "file")] {
                assert_eq!(client.next_line().await, format!("event: {kind}"));
                assert_eq!(client.next_line().await, format!("id: {seq}"));
                let data = client.next_line().await;
                let line = Format::Json.encode(&record(seq, kind, 4));
                assert_eq!(data.as_bytes(), [b"data: ".as_slice(), &line].concat());
                assert_eq!(client.next_line().await, "");
            }
        }
        let bad =
            format!("GET /events?format=xml HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n");
        assert_eq!(fetch(server.address, &bad).await.0, 400);
    }

    #[tokio::test]
    async fn metrics_and_health_answer_without_a_token() {
        let server = Server::start(64, 16).await;
        let (status, headers, body) =
            fetch(server.address, "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "content-type"), Some(crate::metrics::CONTENT_TYPE));
        assert!(body.contains("rtid_events_total{kind=\"file\",verdict=\"deny\"} 1"), "{body}");
        let (status, _, body) = fetch(server.address, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
    }

    #[tokio::test]
    async fn bad_requests_unknown_paths_and_methods_are_refused() {
        let server = Server::start(64, 16).await;
        assert_eq!(fetch(server.address, "NOT HTTP AT ALL\r\n\r\n").await.0, 400);
        assert_eq!(fetch(server.address, "GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n").await.0, 404);
        let (status, headers, _) =
            fetch(server.address, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        assert_eq!((status, header(&headers, "allow")), (405, Some("GET, HEAD")));
        let delete = format!("DELETE /events HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n");
        assert_eq!(fetch(server.address, &delete).await.0, 405);
    }

    #[tokio::test]
    async fn without_an_events_sink_events_is_not_found() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, metrics_page(), None));
        let request = format!("GET /events HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n");
        assert_eq!(fetch(address, &request).await.0, 404);
        assert_eq!(fetch(address, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n").await.0, 200);
    }

    #[tokio::test]
    async fn records_with_no_client_are_neither_delivered_nor_dropped() {
        let server = Server::start(64, 16).await;
        for seq in 0..10 {
            server.publish(record(seq, "file", 8));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!((server.delivered(), server.dropped(), server.depth()), (0, 0, 0));
    }

    #[tokio::test]
    async fn a_client_that_hangs_up_is_forgotten_and_its_queue_counted_as_dropped() {
        let server = Server::start(64, 16).await;
        let (_, gone) = subscribe(&server, "").await;
        let (_, mut live) = subscribe(&server, "").await;
        server.wait_for_clients(2).await;
        drop(gone);
        // Each record lets hyper find the dead socket; the hub then forgets it.
        let mut seq = 0;
        while server.hub.client_count() == 2 {
            seq += 1;
            server.publish(record(seq, "file", 8));
            assert_eq!(serde_json::from_str::<serde_json::Value>(&live.next_line().await).unwrap()["seq"], seq);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Every copy offered to either client is accounted for exactly once.
        eventually("accounting", || {
            server.depth() == 0 && server.delivered() + server.dropped() <= 2 * seq && server.delivered() >= seq
        })
        .await;
    }

    /// The principle under test: a client that stops reading blocks only its
    /// own connection. Its small queue fills and the rest is counted as
    /// dropped, while a second client receives every record, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_loses_events_while_another_gets_all() {
        const RECORDS: u64 = 50_000;
        const BATCH: u64 = 8; // at most this many in flight: the reader's queue (16) never fills
        const PAYLOAD: usize = 1024; // 50,000 x ~1.5 KiB dwarfs hyper's and the kernel's buffers
        let server = Server::start(64, 16).await;
        // Subscribed (the head was read) and then never read again.
        let (_, _stalled) = subscribe(&server, "").await;
        let (_, mut reader) = subscribe(&server, "").await;
        server.wait_for_clients(2).await;
        let mut seq = 0;
        while seq < RECORDS {
            let first = seq + 1;
            for _ in 0..BATCH {
                seq += 1;
                server.publish(record(seq, "file", PAYLOAD));
            }
            for expected in first..=seq {
                let line = reader.next_line().await;
                let value: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert_eq!(value["seq"], expected);
            }
        }
        assert!(server.dropped() > 0, "the stalled client lost nothing?");
        // Every copy is delivered, dropped or still queued for the stalled client.
        eventually("accounting", || server.delivered() + server.dropped() + server.depth() == 2 * RECORDS).await;
        assert!(server.depth() <= 16, "only the stalled client's queue holds records: {}", server.depth());
        assert!(server.delivered() >= RECORDS, "the reader's copies were all delivered");
        assert_eq!(server.hub.client_count(), 2, "a slow client is kept, not cut off");
    }
}
