//! Reading what a stream holds, for assertions.

use std::time::Duration;

use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};

/// How long reading may take before the stream is deemed not to answer. Right after a
/// failover an ordered consumer can stall for seconds while it re-creates itself.
const READ_FOR: Duration = Duration::from_secs(30);

/// Every message on `filter` in `stream`, oldest first, as JSON. Reads at least as many as
/// the stream held on `filter` when called (counted first), so a slow delivery (a stream
/// that just changed leader) never passes for the end; panics if they do not all arrive.
pub async fn stream_messages(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Vec<serde_json::Value> {
    let stream = js.get_stream(stream).await.expect("no such stream");
    let mut held = count(&stream, filter).await;
    if held == 0 {
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
    let deadline = tokio::time::Instant::now() + READ_FOR;
    loop {
        let next = tokio::time::timeout_at(deadline, messages.next()).await;
        let m = match next {
            Ok(Some(Ok(m))) => m,
            // The ordered consumer recovers from these by itself.
            Ok(Some(Err(_))) => continue,
            Ok(None) | Err(_) => panic!("{filter}: read {} of {held} messages", out.len()),
        };
        out.push(serde_json::from_slice(&m.payload).expect("a JSON message"));
        // Each message says how many more match: stop at the last of at least `held`, or
        // of fewer if some went meanwhile (a schedule that fired, a message past its age).
        if m.info().map(|i| i.pending == 0).unwrap_or(true) {
            if out.len() < held {
                held = count(&stream, filter).await;
            }
            if out.len() >= held {
                return out;
            }
        }
    }
}

/// How many messages `stream` holds on `filter`.
async fn count(stream: &jetstream::stream::Stream, filter: &str) -> usize {
    stream
        .info_with_subjects(filter)
        .await
        .expect("stream info")
        .try_fold(0, |n, (_, count)| async move { Ok(n + count) })
        .await
        .expect("stream subjects")
}
