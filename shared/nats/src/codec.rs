//! Request/reply encodings: JSON (proto3 JSON mapping) by default, protobuf when the request
//! says `Content-Type: application/protobuf`.

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use slipway_core::ApiError;

pub const CONTENT_TYPE: &str = "Content-Type";
pub const PROTOBUF: &str = "application/protobuf";
pub const JSON: &str = "application/json";

/// Every API message: prost for the wire, pbjson serde for JSON.
pub trait ApiMessage:
    prost::Message + Default + Serialize + DeserializeOwned + Send + 'static
{
}
impl<T> ApiMessage for T where
    T: prost::Message + Default + Serialize + DeserializeOwned + Send + 'static
{
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    /// The encoding a request asks for (and gets its reply in).
    pub fn of(headers: Option<&HeaderMap>) -> Self {
        let protobuf = headers
            .and_then(|h| h.get(CONTENT_TYPE))
            .is_some_and(|v| v.as_str().eq_ignore_ascii_case(PROTOBUF));
        if protobuf {
            Self::Protobuf
        } else {
            Self::Json
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => JSON,
            Self::Protobuf => PROTOBUF,
        }
    }

    /// Decodes a request; an empty JSON payload is the empty message (`nats req subj ''`).
    pub fn decode<T: ApiMessage>(self, payload: &[u8]) -> Result<T, ApiError> {
        match self {
            Self::Protobuf => T::decode(payload).map_err(|e| {
                ApiError::invalid_argument(format!("malformed protobuf request: {e}"))
            }),
            Self::Json if payload.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
            Self::Json => serde_json::from_slice(payload)
                .map_err(|e| ApiError::invalid_argument(format!("malformed JSON request: {e}"))),
        }
    }

    pub fn encode<T: ApiMessage>(self, message: &T) -> Bytes {
        match self {
            Self::Protobuf => message.encode_to_vec().into(),
            // pbjson's serialisation of generated types cannot fail.
            Self::Json => serde_json::to_vec(message).unwrap_or_default().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::v1::{GetStateReply, PendingTransition, ScheduleDesiredStateChangeRequest};

    #[test]
    fn json_accepts_camel_case_and_string_or_number_int64() {
        let a: ScheduleDesiredStateChangeRequest = Encoding::Json
            .decode(br#"{"delay_ms": 2000, "state": "standby"}"#)
            .unwrap();
        let b: ScheduleDesiredStateChangeRequest = Encoding::Json
            .decode(br#"{"delayMs": "2000", "state": "standby", "idempotencyKey": ""}"#)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.delay_ms, 2000);
    }

    #[test]
    fn json_replies_carry_defaults_and_int64_as_strings() {
        let reply = GetStateReply {
            deployment_id: "dep_x".into(),
            desired_state: "running".into(),
            pending: Some(PendingTransition {
                nonce: "n".into(),
                state: "standby".into(),
                fires_at_ms: 5,
            }),
        };
        let json: serde_json::Value =
            serde_json::from_slice(&Encoding::Json.encode(&reply)).unwrap();
        assert_eq!(json["pending"]["fires_at_ms"], "5");
        let empty = GetStateReply::default();
        let json: serde_json::Value =
            serde_json::from_slice(&Encoding::Json.encode(&empty)).unwrap();
        assert_eq!(json["desired_state"], "");
        assert!(json.get("pending").is_none());
    }

    #[test]
    fn malformed_input_is_invalid_argument() {
        let err = Encoding::Json
            .decode::<ScheduleDesiredStateChangeRequest>(b"{not json")
            .unwrap_err();
        assert_eq!(err.status(), 400);
        let err = Encoding::Protobuf
            .decode::<ScheduleDesiredStateChangeRequest>(&[0xff, 0xff, 0xff])
            .unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.message.contains("protobuf"));
    }
}
