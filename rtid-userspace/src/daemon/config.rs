//! `rtid daemon --config FILE`: where events go (sinks and their formats),
//! the audit trail, the HTTP endpoint (/metrics, /events) and the
//! per-identity event cap. YAML, camelCase keys, unknown keys refused.
//!
//! ```yaml
//! nodeName: node-a            # default: the host name
//! sinks:
//!   - { type: stdout, format: json }
//!   - { type: file, path: /var/log/rtid/events.jsonl, format: ocsf, maxSize: 100MiB, keep: 5 }
//!   - { type: http, tokenFile: /etc/rtid/http-token }        # GET /events on http.listen
//!   - { type: nats, url: "nats://127.0.0.1:4222", stream: RTID }
//! http: { listen: "127.0.0.1:9477" }                         # /metrics (and /events)
//! audit: { path: /var/lib/rtid/audit.log, maxSize: 64MiB, keep: 10, flushInterval: 200ms }
//! throttle: { perIdentityPerSecond: 2000 }
//! ```

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::events::pipeline::Format;

/// Each sink's queue, unless it says otherwise.
pub const DEFAULT_QUEUE: usize = 8192;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DaemonConfig {
    /// Node name in events and NATS subjects (default: the host name).
    pub node_name: Option<String>,
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    pub http: Option<HttpConfig>,
    pub audit: Option<AuditConfig>,
    pub throttle: Option<ThrottleConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON lines on the daemon's stdout (the DaemonSet way).
    Stdout {
        #[serde(default)]
        format: Format,
        #[serde(default = "default_queue")]
        queue: usize,
    },
    /// A file, rotated by size: `path`, `path.1` (newest) ... `path.<keep>`.
    #[serde(rename_all = "camelCase")]
    File {
        path: PathBuf,
        #[serde(default)]
        format: Format,
        #[serde(default = "default_max_size")]
        max_size: bytesize::ByteSize,
        #[serde(default = "default_keep")]
        keep: u32,
        #[serde(default = "default_queue")]
        queue: usize,
    },
    /// A streaming endpoint, `GET /events` on `http.listen`: newline-delimited
    /// JSON, or server-sent events when the client accepts `text/event-stream`.
    /// Every request must carry `Authorization: Bearer <token>`.
    #[serde(rename_all = "camelCase")]
    Http {
        token_file: PathBuf,
        #[serde(default)]
        format: Format,
        /// Each client's queue.
        #[serde(default = "default_queue")]
        queue: usize,
    },
    /// NATS JetStream: subject `rtid.events.<node>.<kind>`, into `stream`
    /// (created, covering `rtid.events.>`, if it does not exist).
    Nats {
        url: String,
        #[serde(default = "default_stream")]
        stream: String,
        #[serde(default)]
        format: Format,
        #[serde(default = "default_queue")]
        queue: usize,
    },
}

impl SinkConfig {
    /// Name in reports and metrics: `file:/var/log/...`, `nats:RTID`, ...
    pub fn name(&self) -> String {
        match self {
            SinkConfig::Stdout { .. } => "stdout".into(),
            SinkConfig::File { path, .. } => format!("file:{}", path.display()),
            SinkConfig::Http { .. } => "http".into(),
            SinkConfig::Nats { stream, .. } => format!("nats:{stream}"),
        }
    }

    pub fn format(&self) -> Format {
        match self {
            SinkConfig::Stdout { format, .. }
            | SinkConfig::File { format, .. }
            | SinkConfig::Http { format, .. }
            | SinkConfig::Nats { format, .. } => *format,
        }
    }

    pub fn queue(&self) -> usize {
        match self {
            SinkConfig::Stdout { queue, .. }
            | SinkConfig::File { queue, .. }
            | SinkConfig::Http { queue, .. }
            | SinkConfig::Nats { queue, .. } => *queue,
        }
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditConfig {
    /// The live log; rotated files are `path.1` (newest) ... `path.<keep>`.
    pub path: PathBuf,
    #[serde(default = "default_audit_size")]
    pub max_size: bytesize::ByteSize,
    #[serde(default = "default_audit_keep")]
    pub keep: u32,
    /// Longest a record waits before it is written through (fsync) to disk.
    #[serde(default = "default_flush", with = "humantime_serde")]
    pub flush_interval: Duration,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Events per second and identity sent to the sinks; the rest are summarised.
    pub per_identity_per_second: u32,
}

fn default_queue() -> usize {
    DEFAULT_QUEUE
}
fn default_max_size() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(100)
}
fn default_keep() -> u32 {
    5
}
fn default_stream() -> String {
    "RTID".into()
}
fn default_audit_size() -> bytesize::ByteSize {
    bytesize::ByteSize::mib(64)
}
fn default_audit_keep() -> u32 {
    10
}
fn default_flush() -> Duration {
    Duration::from_millis(200)
}

impl DaemonConfig {
    /// Reads and checks `path`; every problem names the file (and line, where the parser knows it).
    pub fn load(path: &Path) -> Result<DaemonConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
        let config: DaemonConfig =
            serde_saphyr::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
        config.validate().map_err(|problem| format!("{}: {problem}", path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for (index, sink) in self.sinks.iter().enumerate() {
            if !names.insert(sink.name()) {
                return Err(format!("sinks[{index}]: a second sink {}", sink.name()));
            }
            if sink.queue() == 0 {
                return Err(format!("sinks[{index}].queue: must be at least 1"));
            }
            match sink {
                SinkConfig::Http { .. } if self.http.is_none() => {
                    return Err(format!("sinks[{index}]: an http sink needs http.listen"));
                }
                SinkConfig::File { keep: 0, .. } => return Err(format!("sinks[{index}].keep: must be at least 1")),
                SinkConfig::Nats { url, .. } if !url.starts_with("nats://") => {
                    return Err(format!("sinks[{index}].url: {url:?} is not a nats:// URL"));
                }
                _ => {}
            }
        }
        if let Some(throttle) = &self.throttle
            && throttle.per_identity_per_second == 0
        {
            return Err("throttle.perIdentityPerSecond: must be at least 1".into());
        }
        if let Some(audit) = &self.audit
            && audit.keep == 0
        {
            return Err("audit.keep: must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = r#"
nodeName: node-a
sinks:
  - { type: stdout, format: json }
  - { type: file, path: /var/log/rtid/events.jsonl, format: ocsf, maxSize: 100MiB, keep: 5 }
  - { type: http, tokenFile: /etc/rtid/http-token }
  - { type: nats, url: "nats://127.0.0.1:4222", stream: RTID }
http: { listen: "127.0.0.1:9477" }
audit: { path: /var/lib/rtid/audit.log, maxSize: 64MiB, keep: 10, flushInterval: 200ms }
throttle: { perIdentityPerSecond: 2000 }
"#;
        let config: DaemonConfig = serde_saphyr::from_str(text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.sinks.len(), 4);
        assert_eq!(config.sinks[1].format(), Format::Ocsf);
        assert_eq!(config.audit.unwrap().flush_interval, Duration::from_millis(200));
    }

    #[test]
    fn mistakes_are_named() {
        let unknown = serde_saphyr::from_str::<DaemonConfig>("sinks:\n  - { type: kafka }\n").unwrap_err().to_string();
        assert!(unknown.contains("kafka"), "{unknown}");
        let config: DaemonConfig = serde_saphyr::from_str("sinks:\n  - { type: http, tokenFile: /t }\n").unwrap();
        assert!(config.validate().unwrap_err().contains("http.listen"));
    }
}
