//! Telling approvers: an HTTP POST of the approval request as JSON, with a
//! timeout per attempt and a few retries. Runs on its own task, so a webhook
//! that is slow or down delays neither the agent nor other requests.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};
use tracing::{info, warn};

const ATTEMPTS: u32 = 3;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// `http://host:port/path` split into (host:port, path).
fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(index) => (&rest[..index], &rest[index..]),
        None => (rest, "/"),
    };
    let authority = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    Some((authority, path.to_string()))
}

async fn post_once(authority: &str, path: &str, body: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(authority).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let status_line = String::from_utf8_lossy(&response);
    let code = status_line.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok(code)
}

pub async fn notify(url: String, body: String) {
    let Some((authority, path)) = split_url(&url) else {
        warn!(url, "approval webhook: only http://host:port/path URLs are supported");
        return;
    };
    for attempt in 1..=ATTEMPTS {
        match timeout(ATTEMPT_TIMEOUT, post_once(&authority, &path, &body)).await {
            Ok(Ok(code)) if (200..300).contains(&code) => {
                info!(url, code, "approval webhook notified");
                return;
            }
            Ok(Ok(code)) => warn!(url, code, attempt, "approval webhook refused the request"),
            Ok(Err(error)) => warn!(url, %error, attempt, "approval webhook unreachable"),
            Err(_) => warn!(url, attempt, "approval webhook timed out"),
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
    warn!(url, "approval webhook: giving up after {ATTEMPTS} attempts");
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(super::split_url("http://127.0.0.1:9000/hook"), Some(("127.0.0.1:9000".into(), "/hook".into())));
        assert_eq!(super::split_url("http://approver"), Some(("approver:80".into(), "/".into())));
        assert_eq!(super::split_url("https://x"), None);
    }
}
