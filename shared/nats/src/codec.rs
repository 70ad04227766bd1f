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
            Self::Json => {
                let malformed = |e: serde_json::Error| {
                    ApiError::invalid_argument(format!("malformed JSON request: {e}"))
                };
                let mut value: serde_json::Value =
                    serde_json::from_slice(payload).map_err(malformed)?;
                proto3_json(&mut value);
                serde_json::from_value(value).map_err(malformed)
            }
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

/// What the proto3 JSON mapping accepts beyond what pbjson's generated code does: `null`
/// for any field means its default (the field is dropped), and an integral number may be
/// written as a float (`8082.0`).
fn proto3_json(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(fields) => {
            fields.retain(|_, v| !v.is_null());
            fields.values_mut().for_each(proto3_json);
        }
        Value::Array(items) => items.iter_mut().for_each(proto3_json),
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // Exactly representable integers only: 2^53 and beyond stay as written.
            if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
                *value = if f < 0.0 {
                    Value::from(f as i64)
                } else {
                    Value::from(f as u64)
                };
            }
        }
        _ => {}
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
    fn null_is_the_default_and_integral_floats_are_integers() {
        let a: slipway_proto::v1::CreateEnvironmentRequest = Encoding::Json
            .decode(br#"{"project_id": "proj_1", "slug": "qa", "port": 8082.0, "sentinel_config": null, "regions": {"eu": 2.0}}"#)
            .unwrap();
        assert_eq!(
            (a.port, a.sentinel_config, a.regions["eu"]),
            (Some(8082), None, 2)
        );
        let b: slipway_proto::v1::CreateWorkspaceRequest = Encoding::Json
            .decode(br#"{"slug": "acme", "name": null}"#)
            .unwrap();
        assert_eq!((b.slug.as_str(), b.name.as_str()), ("acme", ""));
        // Not integral: still refused, as the mapping says.
        let err = Encoding::Json
            .decode::<slipway_proto::v1::CreateEnvironmentRequest>(br#"{"port": 8082.5}"#)
            .unwrap_err();
        assert_eq!(err.status(), 400);
    }

    /// Fuzz target of the codec (seeded: `SLIPWAY_FUZZ_SEED`, `SLIPWAY_FUZZ_ITERATIONS`):
    /// random bytes and mangled JSON, decoded as requests of every shape, in both encodings,
    /// never panic, and whatever is refused is a 400.
    #[test]
    fn arbitrary_payloads_decode_or_are_refused_as_400() {
        use slipway_core::seeded::{iterations, Rng};
        use slipway_proto::v1::{
            AssignFrontlineRoutesRequest, CreateDeploymentRequest, CreateEnvironmentRequest,
        };
        let (mut rng, seed) = Rng::from_env("SLIPWAY_FUZZ_SEED", 23);
        let pieces = [
            "{",
            "}",
            "[",
            "]",
            "\"",
            ":",
            ",",
            "null",
            "1",
            "-0",
            "1e999",
            "8082.0",
            "0.5",
            "\"project_id\"",
            "\"regions\"",
            "\"git_source\"",
            "\"port\"",
            "\"\\u0000\"",
            "\"\\n\"",
            "true",
            "\"é\"",
            " ",
            "\"x\"",
        ];
        for case in 0..iterations(20_000) {
            let payload: Vec<u8> = if rng.below(2) == 0 {
                let len = rng.below(64);
                (0..len).map(|_| (rng.next_u64() & 0xff) as u8).collect()
            } else {
                let len = 1 + rng.below(24);
                rng.string(&pieces, len).into_bytes()
            };
            for encoding in [Encoding::Json, Encoding::Protobuf] {
                let outcomes = [
                    encoding.decode::<CreateDeploymentRequest>(&payload).err(),
                    encoding.decode::<CreateEnvironmentRequest>(&payload).err(),
                    encoding
                        .decode::<AssignFrontlineRoutesRequest>(&payload)
                        .err(),
                ];
                for err in outcomes.into_iter().flatten() {
                    assert_eq!(
                        err.status(),
                        400,
                        "seed {seed}, case {case}: {:?}",
                        String::from_utf8_lossy(&payload)
                    );
                }
            }
        }
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
