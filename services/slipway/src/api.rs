//! The CLI's side of the NATS API: JSON requests whose error replies become the server's
//! message, and a connection built from the same settings every service reads.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use slipway_core::config::NatsConfig;

pub struct Api {
    pub client: async_nats::Client,
}

impl Api {
    pub async fn connect(common: &NatsConfig) -> Result<Self> {
        let client = slipway_nats::connect(common, "slipway-cli")
            .await
            .with_context(|| format!("cannot connect to NATS at {}", common.nats_url))?;
        Ok(Self { client })
    }

    /// A request; an error reply becomes an error carrying the server's message.
    pub async fn call(&self, subject: &str, body: Value) -> Result<Value> {
        self.call_with_timeout(subject, body, Duration::from_secs(10))
            .await
    }

    pub async fn call_with_timeout(
        &self,
        subject: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value> {
        let request = async_nats::Request::new()
            .payload(body.to_string().into())
            .timeout(Some(timeout));
        let reply = self
            .client
            .send_request(subject.to_string(), request)
            .await
            .map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    anyhow::anyhow!("{subject}: no service answers (is the control plane running?)")
                }
                _ => anyhow::anyhow!("{subject}: {e}"),
            })?;
        let value: Value = serde_json::from_slice(&reply.payload)
            .with_context(|| format!("{subject}: the reply is not JSON"))?;
        let failed = reply.headers.as_ref().is_some_and(|h| {
            h.get(async_nats::service::NATS_SERVICE_ERROR_CODE)
                .is_some()
        });
        if failed {
            let error = &value["error"];
            bail!(
                "{} ({} {})",
                error["message"].as_str().unwrap_or("unknown error"),
                error["status"],
                error["code"].as_str().unwrap_or_default()
            );
        }
        Ok(value)
    }
}

/// `--json`: the reply as it came; otherwise `human` renders it.
pub fn print(json: bool, value: &Value, human: impl FnOnce(&Value)) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        human(value);
    }
}

pub fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_default()
}

/// Unix milliseconds (a JSON number or a proto3 int64 string) as RFC 3339.
pub fn time_of(value: &Value) -> String {
    let ms = value
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_default();
    humantime::format_rfc3339_millis(slipway_core::time::to_system_time(ms)).to_string()
}
