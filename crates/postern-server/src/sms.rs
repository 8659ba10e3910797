//! SMS gateways: how a one-time registration code reaches a phone.
//!
//! - [`OutboxGateway`] appends a JSON line `{"phone":…,"code":…,"at":…}` to
//!   a file: the development default, and what tests read codes from.
//! - [`WebhookGateway`] POSTs `{"phone":…,"code":…,"text":…}` to a URL, for a
//!   real SMS provider behind a small adapter.
//!
//! Gateways see phone numbers and codes; they must never log either.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// Why a code could not be handed to the gateway.
#[derive(Debug, thiserror::Error)]
pub enum SmsError {
    /// Writing the outbox file failed.
    #[error("cannot append to the SMS outbox {path}: {source}")]
    Outbox {
        /// The outbox file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The webhook could not be reached or did not answer 2xx.
    #[error("SMS webhook failed: {0}")]
    Webhook(String),
}

/// Something that delivers a code to a phone number.
#[async_trait]
pub trait SmsGateway: Send + Sync {
    /// Sends `code` to `phone` (E.164). `now_ms` is the server clock.
    async fn send_code(&self, phone: &str, code: &str, now_ms: i64) -> Result<(), SmsError>;
}

/// Appends codes to a JSON-lines file.
pub struct OutboxGateway {
    path: PathBuf,
    lock: Mutex<()>,
}

impl OutboxGateway {
    /// A gateway writing to `path` (created on first use).
    pub fn new(path: PathBuf) -> Self {
        OutboxGateway {
            path,
            lock: Mutex::new(()),
        }
    }
}

#[async_trait]
impl SmsGateway for OutboxGateway {
    async fn send_code(&self, phone: &str, code: &str, now_ms: i64) -> Result<(), SmsError> {
        let mut line =
            serde_json::json!({ "phone": phone, "code": code, "at": now_ms }).to_string();
        line.push('\n');
        let err = |source| SmsError::Outbox {
            path: self.path.clone(),
            source,
        };
        let _guard = self.lock.lock().await;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(err)?;
        file.write_all(line.as_bytes()).await.map_err(err)?;
        file.flush().await.map_err(err)
    }
}

/// POSTs codes to an HTTP(S) endpoint.
pub struct WebhookGateway {
    url: String,
    client: reqwest::Client,
}

impl WebhookGateway {
    /// A gateway posting to `url`, with a 10 s timeout.
    pub fn new(url: String) -> Result<Self, SmsError> {
        // The process-wide rustls provider; installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| SmsError::Webhook(e.to_string()))?;
        Ok(WebhookGateway { url, client })
    }
}

#[async_trait]
impl SmsGateway for WebhookGateway {
    async fn send_code(&self, phone: &str, code: &str, _now_ms: i64) -> Result<(), SmsError> {
        let body = serde_json::json!({
            "phone": phone,
            "code": code,
            "text": format!("Your Postern code is {code}. Do not share it with anyone."),
        });
        let resp = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await
            // Never include the request (it holds the code) in the error.
            .map_err(|e| SmsError::Webhook(e.without_url().to_string()))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(SmsError::Webhook(format!(
                "endpoint answered {}",
                resp.status()
            )))
        }
    }
}

/// The newest code the outbox file holds for `phone` (E.164), for the demo,
/// tests and development setups that read codes from the outbox.
pub fn outbox_code(path: &std::path::Path, phone: &str) -> std::io::Result<Option<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["phone"] == phone)
        .find_map(|v| v["code"].as_str().map(str::to_owned)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outbox_appends_json_lines_and_reads_back_the_newest_code() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let gw = OutboxGateway::new(path.clone());
        gw.send_code("+14155552671", "111111", 1).await.unwrap();
        gw.send_code("+79123456789", "222222", 2).await.unwrap();
        gw.send_code("+14155552671", "333333", 3).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"phone": "+14155552671", "code": "111111", "at": 1})
        );
        assert_eq!(
            outbox_code(&path, "+14155552671").unwrap().as_deref(),
            Some("333333")
        );
        assert_eq!(outbox_code(&path, "+10000000000").unwrap(), None);
    }
}
