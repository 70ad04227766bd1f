//! A thin layer over `async_nats::service`: typed endpoints whose handlers return
//! `Result<Reply, ApiError>`, decoded and encoded per [`Encoding`], errors answered as API.md
//! says (headers and body), requests handled concurrently, and a panic answered as a 500
//! instead of leaving the caller waiting.

use std::future::Future;

use async_nats::{
    service::{self, ServiceExt},
    HeaderMap,
};
use futures::StreamExt;
use slipway_core::ApiError;
use slipway_proto::v1::{Error as ErrorBody, ErrorReply};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::codec::{ApiMessage, Encoding, CONTENT_TYPE};

/// A decoded request and the subject it came on.
#[derive(Debug)]
pub struct Call<Req> {
    pub subject: String,
    pub request: Req,
}

impl<Req> Call<Req> {
    /// The last subject token: the key of `…<verb>.<key>` endpoints.
    pub fn key(&self) -> &str {
        self.subject.rsplit('.').next().unwrap_or_default()
    }
}

/// A running NATS micro service (`nats micro ls` shows it).
pub struct Micro {
    service: service::Service,
}

impl Micro {
    pub async fn start(
        client: &async_nats::Client,
        name: &str,
        version: &str,
        description: &str,
    ) -> Result<Self, async_nats::Error> {
        let service = client
            .service_builder()
            .description(description)
            .start(name, version)
            .await?;
        Ok(Self { service })
    }

    /// As [`start`](Self::start), with `metadata` (`nats micro info` shows it) and
    /// `stats(endpoint, stats)` giving the `data` each endpoint shows in `nats micro stats`.
    pub async fn start_with<F>(
        client: &async_nats::Client,
        name: &str,
        version: &str,
        description: &str,
        metadata: std::collections::HashMap<String, String>,
        stats: F,
    ) -> Result<Self, async_nats::Error>
    where
        F: FnMut(String, service::endpoint::Stats) -> serde_json::Value + Send + Sync + 'static,
    {
        let service = client
            .service_builder()
            .description(description)
            .metadata(metadata)
            .stats_handler(stats)
            .start(name, version)
            .await?;
        Ok(Self { service })
    }

    /// This instance's id (unique per process).
    pub async fn id(&self) -> String {
        self.service.info().await.id
    }

    /// Returns once the server routes requests to this service: a `$SRV.PING` addressed to
    /// this instance's id, sent on the service's own connection and so processed after every
    /// subscription it made (a flush alone only empties the client's write buffer).
    pub async fn await_reachable(
        &self,
        client: &async_nats::Client,
    ) -> Result<(), async_nats::Error> {
        let info = self.service.info().await;
        let subject = format!("$SRV.PING.{}.{}", info.name, info.id);
        let mut last = String::new();
        for _ in 0..50 {
            let ping = client.request(subject.clone(), bytes::Bytes::new());
            match tokio::time::timeout(std::time::Duration::from_secs(2), ping).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(format!("{subject} unanswered: {last}").into())
    }

    /// [`endpoint`](Self::endpoint) for handlers that are methods of a service's state:
    /// `micro.serve(&state, "get", "svc.v1.get.*", |s, call| async move { s.get(call).await })`.
    pub async fn serve<S, Req, Rep, H, Fut>(
        &self,
        state: &S,
        name: &str,
        subject: &str,
        handler: H,
    ) -> Result<JoinHandle<()>, async_nats::Error>
    where
        S: Clone + Send + Sync + 'static,
        Req: ApiMessage,
        Rep: ApiMessage,
        H: Fn(S, Call<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Rep, ApiError>> + Send + 'static,
    {
        let state = state.clone();
        self.endpoint(name, subject, move |call| handler(state.clone(), call))
            .await
    }

    /// Serves `subject` (wildcards allowed) as endpoint `name`, in the default queue group.
    pub async fn endpoint<Req, Rep, H, Fut>(
        &self,
        name: &str,
        subject: &str,
        handler: H,
    ) -> Result<JoinHandle<()>, async_nats::Error>
    where
        Req: ApiMessage,
        Rep: ApiMessage,
        H: Fn(Call<Req>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Rep, ApiError>> + Send + 'static,
    {
        let mut endpoint = self
            .service
            .endpoint_builder()
            .name(name)
            .add(subject.to_string())
            .await?;
        let name = name.to_string();
        Ok(tokio::spawn(async move {
            while let Some(request) = endpoint.next().await {
                let handler = handler.clone();
                let span = tracing::info_span!("request", endpoint = %name, subject = %request.message.subject);
                tokio::spawn(serve(request, handler).instrument(span));
            }
        }))
    }
}

async fn serve<Req, Rep, H, Fut>(request: service::Request, handler: H)
where
    Req: ApiMessage,
    Rep: ApiMessage,
    H: Fn(Call<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Rep, ApiError>> + Send + 'static,
{
    let encoding = Encoding::of(request.message.headers.as_ref());
    let result = match encoding.decode::<Req>(&request.message.payload) {
        Err(e) => Err(e),
        Ok(req) => {
            let call = Call {
                subject: request.message.subject.to_string(),
                request: req,
            };
            // A separate task, so a panic becomes a 500 reply rather than silence.
            match tokio::spawn(handler(call).in_current_span()).await {
                Ok(result) => result,
                Err(join) => {
                    tracing::error!(error = %join, "handler panicked");
                    Err(ApiError::internal("internal error"))
                }
            }
        }
    };
    let (body, headers) = match result {
        Ok(reply) => (encoding.encode(&reply), reply_headers(encoding, None)),
        Err(err) => error_payload(encoding, &err),
    };
    if let Err(e) = request
        .respond_with_headers(Ok(body), headers.clone())
        .await
    {
        // Too large for the server's max_payload, say: the caller still gets an answer.
        tracing::warn!(error = %e, "cannot send the reply; answering with a short error");
        let err = ApiError::internal(format!("the reply could not be sent: {e}"));
        let (body, headers) = error_payload(encoding, &err);
        if let Err(e) = request.respond_with_headers(Ok(body), headers).await {
            tracing::warn!(error = %e, "cannot send the short error either");
        }
    }
}

/// The longest error message a reply carries; what a message echoes of its input past this
/// is cut, so an error about a huge input is never too large to send.
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// The longest `Nats-Service-Error` header value.
const MAX_ERROR_HEADER: usize = 256;

/// An error reply: the body of API.md and the micro-service error headers. The body must carry
/// the error too, which `respond(Err(..))` cannot do, so error replies go out as payloads with
/// the error headers set by hand.
fn error_payload(encoding: Encoding, err: &ApiError) -> (bytes::Bytes, HeaderMap) {
    if err.status() >= 500 {
        tracing::warn!(code = %err.code, message = %bounded(&err.message, MAX_ERROR_MESSAGE), "request failed");
    } else {
        tracing::debug!(code = %err.code, message = %bounded(&err.message, MAX_ERROR_MESSAGE), "request refused");
    }
    let err = ApiError::new(err.code, bounded(&err.message, MAX_ERROR_MESSAGE));
    (
        encoding.encode(&error_reply(&err)),
        reply_headers(encoding, Some(&err)),
    )
}

fn reply_headers(encoding: Encoding, err: Option<&ApiError>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, encoding.content_type());
    if let Some(err) = err {
        headers.insert(
            service::NATS_SERVICE_ERROR_CODE,
            err.status().to_string().as_str(),
        );
        // async-nats panics on a header value with CR or LF in it.
        headers.insert(
            service::NATS_SERVICE_ERROR,
            bounded(&err.message, MAX_ERROR_HEADER).as_str(),
        );
    }
    headers
}

/// `message` with every control character as a space, cut to at most `max` bytes on a
/// character boundary (ending in `…` when cut).
pub fn bounded(message: &str, max: usize) -> String {
    let clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.len() <= max {
        return clean;
    }
    let ellipsis = '…';
    let mut end = max.saturating_sub(ellipsis.len_utf8());
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ellipsis}", &clean[..end])
}

pub fn error_reply(err: &ApiError) -> ErrorReply {
    ErrorReply {
        error: Some(ErrorBody {
            status: err.status().into(),
            code: err.code.as_str().to_string(),
            message: err.message.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_text_is_bounded_and_has_no_control_characters() {
        assert_eq!(bounded("a\r\nb\tc", 100), "a  b c");
        let long = "\u{200b}".repeat(62_000);
        let cut = bounded(&format!("{long:?}"), MAX_ERROR_MESSAGE);
        assert!(
            cut.len() <= MAX_ERROR_MESSAGE && cut.ends_with('…'),
            "{}",
            cut.len()
        );
        let multi = "é".repeat(600);
        let cut = bounded(&multi, 101);
        assert!(cut.len() <= 101 && cut.ends_with('…'));
        assert_eq!(bounded("short", 10), "short");
    }

    /// Whatever the message, the bounded text is short, valid and free of control characters.
    #[test]
    fn bounded_holds_for_arbitrary_text() {
        use slipway_core::seeded::{iterations, Rng};
        let (mut rng, seed) = Rng::from_env("SLIPWAY_FUZZ_SEED", 29);
        let pieces = ["a", "é", "日本", "\u{200b}", "\r", "\n", "\u{0}", "😀", " "];
        for case in 0..iterations(5_000) {
            let long = rng.below(20) == 0;
            let len = rng.below(if long { 5_000 } else { 300 });
            let text = rng.string(&pieces, len);
            let max = 2 + rng.below(400);
            let out = bounded(&text, max);
            assert!(
                out.len() <= max.max(3) && !out.chars().any(char::is_control),
                "seed {seed}, case {case}: {} bytes for max {max}",
                out.len()
            );
        }
    }
}
