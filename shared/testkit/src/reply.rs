//! Decoding a micro-service reply in tests: the typed reply, or the error reply with its
//! status header, its message header and its body.

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct ErrorReply {
    /// `Nats-Service-Error-Code`.
    pub status: u16,
    /// The body's `error.code`.
    pub code: String,
    /// The body's `error.message`.
    pub message: String,
    /// `Nats-Service-Error`.
    pub header_message: String,
    pub body: Value,
}

/// The reply as `T`, or the error it carries. Panics on a reply that is neither.
pub fn decode_reply<T: DeserializeOwned>(msg: &async_nats::Message) -> Result<T, ErrorReply> {
    let headers = msg.headers.clone().unwrap_or_default();
    if let Some(code) = headers.get(NATS_SERVICE_ERROR_CODE) {
        let body: Value = serde_json::from_slice(&msg.payload).unwrap_or(Value::Null);
        return Err(ErrorReply {
            status: code.as_str().parse().unwrap_or(0),
            code: body["error"]["code"].as_str().unwrap_or_default().into(),
            message: body["error"]["message"].as_str().unwrap_or_default().into(),
            header_message: headers
                .get(NATS_SERVICE_ERROR)
                .map(|v| v.to_string())
                .unwrap_or_default(),
            body,
        });
    }
    Ok(serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("bad reply {:?}: {e}", String::from_utf8_lossy(&msg.payload))))
}
