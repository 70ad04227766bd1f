//! The CLI's side of the NATS API: typed requests (the messages of `slipway-proto`, sent as
//! protobuf by `slipway_nats::client`) whose error replies become the server's message, and a
//! connection built from the same settings every service reads.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use slipway_core::{config::NatsConfig, ErrorCode};
use slipway_nats::codec::ApiMessage;

/// How long a request waits for its reply unless the command says otherwise.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Api {
    pub client: async_nats::Client,
}

impl Api {
    /// Connects; an error says once what failed, with the URL and where it came from.
    pub async fn connect(common: &NatsConfig, origin: UrlOrigin) -> Result<Self> {
        let client = slipway_nats::connect(common, "slipway-cli")
            .await
            .map_err(|e| anyhow::anyhow!("{e} ({})", origin.describe()))?;
        Ok(Self { client })
    }

    /// A request; an error reply becomes an error carrying the server's message.
    pub async fn request<Req: ApiMessage, Rep: ApiMessage>(
        &self,
        subject: impl Into<String>,
        request: &Req,
    ) -> Result<Rep> {
        self.request_with_timeout(subject, request, TIMEOUT).await
    }

    pub async fn request_with_timeout<Req: ApiMessage, Rep: ApiMessage>(
        &self,
        subject: impl Into<String>,
        request: &Req,
        timeout: Duration,
    ) -> Result<Rep> {
        slipway_nats::client::request(&self.client, subject.into(), request, timeout)
            .await
            .map_err(|e| match e.code {
                ErrorCode::Unavailable => {
                    anyhow::anyhow!("{} (is the control plane running?)", e.message)
                }
                code => anyhow::anyhow!("{} ({} {code})", e.message, code.status()),
            })
    }
}

impl Api {
    /// The port an edge of this control plane listens on (its micro-service metadata), if
    /// one answers.
    pub async fn edge_port(&self) -> Option<u16> {
        let info = self
            .client
            .request("$SRV.INFO.slipway-edge", bytes::Bytes::new());
        let reply = tokio::time::timeout(Duration::from_secs(1), info)
            .await
            .ok()?
            .ok()?;
        let info: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
        let listen = info["metadata"]["listen"].as_str()?;
        listen
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.port())
    }
}

/// `--json`: the value as proto3 JSON; otherwise `human` renders it.
pub fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T)) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        human(value);
    }
}

/// Unix milliseconds as RFC 3339.
pub fn time_of(ms: i64) -> String {
    humantime::format_rfc3339_millis(slipway_core::time::to_system_time(ms)).to_string()
}

/// How long before `now_ms` `ms` was, briefly: `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn ago(ms: i64, now_ms: i64) -> String {
    let secs = (now_ms - ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3_599 => format!("{}m ago", secs / 60),
        3_600..=86_399 => format!("{}h ago", secs / 3_600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ago_is_brief() {
        let now = 10 * 86_400_000;
        assert_eq!(super::ago(now - 12_000, now), "12s ago");
        assert_eq!(super::ago(now - 5 * 60_000, now), "5m ago");
        assert_eq!(super::ago(now - 3 * 3_600_000, now), "3h ago");
        assert_eq!(super::ago(now - 2 * 86_400_000, now), "2d ago");
        assert_eq!(super::ago(now + 5_000, now), "0s ago", "a clock ahead");
    }
}

/// Where the CLI's NATS URL came from, for its connection errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlOrigin {
    Flag,
    SlipwayNatsUrl,
    NatsUrl,
    Default,
}

impl UrlOrigin {
    /// Reads the environment before the arguments are parsed; `NATS_URL` (the nats CLI's
    /// variable) stands in for `SLIPWAY_NATS_URL` when only it is set.
    pub fn resolve(args: &[String]) -> Self {
        if args
            .iter()
            .any(|a| a == "--nats-url" || a.starts_with("--nats-url="))
        {
            return UrlOrigin::Flag;
        }
        if std::env::var_os("SLIPWAY_NATS_URL").is_some() {
            return UrlOrigin::SlipwayNatsUrl;
        }
        match std::env::var("NATS_URL") {
            Ok(url) if !url.trim().is_empty() => {
                std::env::set_var("SLIPWAY_NATS_URL", url);
                UrlOrigin::NatsUrl
            }
            _ => UrlOrigin::Default,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            UrlOrigin::Flag => "from --nats-url",
            UrlOrigin::SlipwayNatsUrl => "from SLIPWAY_NATS_URL",
            UrlOrigin::NatsUrl => "from NATS_URL",
            UrlOrigin::Default => {
                "the default: set SLIPWAY_NATS_URL (or NATS_URL) to the URL `slipway dev` printed"
            }
        }
    }
}
