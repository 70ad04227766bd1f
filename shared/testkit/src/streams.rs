//! Reading what a stream holds, for assertions.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;

/// Every message on `filter` in `stream`, oldest first, as JSON (an ordered consumer that
/// stops at the last matching message).
pub async fn stream_messages(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Vec<serde_json::Value> {
    let stream = js.get_stream(stream).await.expect("no such stream");
    let info = stream.get_info().await.expect("stream info");
    if info.state.messages == 0 {
        return vec![];
    }
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut out = vec![];
    let mut messages = consumer.messages().await.expect("consumer messages");
    // Each message says how many more match; stop at the last (or when none match at all).
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(1), messages.next()).await
    {
        out.push(serde_json::from_slice(&m.payload).expect("a JSON message"));
        if m.info().map(|i| i.pending == 0).unwrap_or(true) {
            break;
        }
    }
    out
}
