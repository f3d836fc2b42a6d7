//! The real peers the event-stream tests talk to: a `nats-server` with
//! JetStream, a raw HTTP/1.1 client for the daemon's endpoint, and the
//! validators security teams would run (promtool, the OCSF schema models).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("free port").port()
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on 127.0.0.1:{port} within 15s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `nats-server -js` on loopback, killed on drop.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
}

impl NatsServer {
    pub fn start(store: &Path) -> NatsServer {
        let mut server = NatsServer { child: None, port: free_port(), store: store.to_path_buf() };
        server.restart();
        server
    }

    /// Starts it (again) on the same port and storage.
    pub fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (Debian package nats-server; .ci/run installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "nats-server");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// One request/reply over the NATS text protocol: enough to ask the
    /// JetStream API about a stream without a client library.
    pub fn request(&self, subject: &str, payload: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to nats-server");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut info = String::new();
        reader.read_line(&mut info).unwrap();
        let inbox = format!("_INBOX.rtid-test.{}", std::process::id());
        write!(
            stream,
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {inbox} 1\r\nPUB {subject} {inbox} {}\r\n{payload}\r\nPING\r\n",
            payload.len()
        )
        .unwrap();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("a reply from nats-server");
            if let Some(header) = line.strip_prefix("MSG ") {
                let size: usize = header.split_whitespace().last().and_then(|n| n.parse().ok()).expect("MSG size");
                let mut body = vec![0; size + 2];
                reader.read_exact(&mut body).unwrap();
                return String::from_utf8_lossy(&body[..size]).into_owned();
            }
            assert!(!line.starts_with("-ERR"), "nats-server: {line}");
        }
    }

    /// Messages stored in `stream`.
    pub fn stream_messages(&self, stream: &str) -> u64 {
        let info = self.request(&format!("$JS.API.STREAM.INFO.{stream}"), "");
        let value: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        value["state"]["messages"].as_u64().unwrap_or(0)
    }

    /// Subject and decoded payload of message `seq` of `stream`.
    pub fn stream_message(&self, stream: &str, seq: u64) -> (String, String) {
        let reply = self.request(&format!("$JS.API.STREAM.MSG.GET.{stream}"), &format!("{{\"seq\":{seq}}}"));
        let value: serde_json::Value = serde_json::from_str(&reply).expect("JSON reply");
        let message = &value["message"];
        let data = message["data"].as_str().unwrap_or_default();
        let decoded = base64_decode(data);
        (message["subject"].as_str().unwrap_or_default().to_string(), String::from_utf8_lossy(&decoded).into_owned())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.bytes().filter(|byte| *byte != b'=') {
        let Some(value) = ALPHABET.iter().position(|a| *a == byte) else { continue };
        bits = bits << 6 | value as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

/// An HTTP/1.1 GET over a fresh connection; returns the connection after the
/// request is sent (for streams) .
pub fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the daemon's HTTP endpoint");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

/// A whole (non-streaming) response: status code and body.
pub fn http_fetch(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut all = headers.to_vec();
    all.push(("Connection", "close"));
    let mut stream = http_get(port, path, &all);
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    let body = if text.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(&body) } else { body };
    (status, body)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// JSON lines read from a streaming response until `wanted` of them matched
/// `filter` or `timeout` passed.
pub fn read_json_lines(
    stream: &mut TcpStream,
    timeout: Duration,
    wanted: usize,
    filter: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + timeout;
    let mut buffered = String::new();
    let mut matched = Vec::new();
    let mut chunk = [0u8; 65536];
    while Instant::now() < deadline && matched.len() < wanted {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(read) => buffered.push_str(&String::from_utf8_lossy(&chunk[..read])),
            Err(_) => continue,
        }
        while let Some(end) = buffered.find('\n') {
            let line: String = buffered.drain(..=end).collect();
            // Chunk-size lines and headers are not JSON; SSE lines carry it after `data: `.
            let line = line.trim().trim_start_matches("data: ");
            if let Ok(value) = serde_json::from_str::<serde_json::Value>(line)
                && filter(&value)
            {
                matched.push(value);
            }
        }
    }
    matched
}

/// `promtool check metrics` on a page: Ok, or what promtool said.
pub fn promtool_check(page: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("promtool (Debian package prometheus; .ci/run installs it): {error}"))?;
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    }
}

/// Runs the OCSF validator (tests/ocsf/validate.py, pydantic models of
/// ocsf-emitter) on a file of OCSF JSON lines.
pub fn ocsf_validate(file: &str) -> Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("ocsf/validate.py");
    let output = Command::new("python3").arg(script).arg(file).output().map_err(|error| format!("python3: {error}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() { Ok(text) } else { Err(text) }
}
