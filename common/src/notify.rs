//! Notifications: a webhook that receives `POST {"<payloadKey>": "[statiko] (<node>) <message>"}`
//! (the original's format) for failed deploys, failed certificate issuance and expiry reminders.
//!
//! Delivery is best effort: a failure is logged, never retried, and never blocks the caller
//! (messages are sent from a spawned task with a 15 s timeout). The URL is never logged, since
//! chat webhooks carry their credential in it.

use std::time::Duration;

use crate::config::WebhookConfig;

/// How long one webhook call may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Sends notifications; cheap to clone. Without a configured URL every message is only logged.
#[derive(Clone)]
pub struct Notifier {
    inner: Option<(reqwest::Client, String, String)>,
    node: String,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("webhook", &self.inner.is_some())
            .field("node", &self.node)
            .finish()
    }
}

impl Notifier {
    /// A notifier for `notifications.webhook`, signing messages with the node name.
    pub fn new(config: &WebhookConfig, node: &str) -> Self {
        let inner = (!config.url.is_empty())
            .then(|| {
                reqwest::Client::builder()
                    .timeout(TIMEOUT)
                    .build()
                    .map_err(|err| tracing::warn!(error = %err, "webhook client unavailable"))
                    .ok()
                    .map(|client| (client, config.url.clone(), config.payload_key.clone()))
            })
            .flatten();
        Self {
            inner,
            node: node.to_owned(),
        }
    }

    /// A notifier that only logs.
    pub fn disabled(node: &str) -> Self {
        Self {
            inner: None,
            node: node.to_owned(),
        }
    }

    /// The JSON body for `message`.
    pub fn payload(payload_key: &str, node: &str, message: &str) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        body.insert(
            payload_key.to_owned(),
            serde_json::Value::String(format!("[statiko] ({node}) {message}")),
        );
        serde_json::Value::Object(body)
    }

    /// Sends `message` in the background.
    pub fn send(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(notification = %message, "notification");
        let Some((client, url, key)) = self.inner.clone() else {
            return;
        };
        let body = Self::payload(&key, &self.node, &message).to_string();
        tokio::spawn(async move {
            let result = client
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    tracing::warn!(status = %response.status(), "webhook refused the notification")
                }
                Err(err) => tracing::warn!(error = %err.without_url(), "webhook call failed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_uses_the_configured_key() {
        let body = Notifier::payload("text", "edge-1", "certificate expires in 7 days");
        assert_eq!(
            body,
            serde_json::json!({"text": "[statiko] (edge-1) certificate expires in 7 days"})
        );
    }
}
