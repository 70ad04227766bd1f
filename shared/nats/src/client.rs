//! Calling another Slipway service: a typed request in protobuf, its error replies turned
//! back into [`ApiError`]s, and an unreachable service reported as `unavailable`.

use std::time::Duration;

use async_nats::{service, HeaderMap, RequestErrorKind};
use slipway_core::{ApiError, ErrorCode};
use slipway_proto::v1::ErrorReply;

use crate::codec::{ApiMessage, Encoding, CONTENT_TYPE};

pub async fn request<Req: ApiMessage, Rep: ApiMessage>(
    client: &async_nats::Client,
    subject: String,
    request: &Req,
    timeout: Duration,
) -> Result<Rep, ApiError> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, Encoding::Protobuf.content_type());
    let sent = client.send_request(
        subject.clone(),
        async_nats::Request::new()
            .headers(headers)
            .payload(Encoding::Protobuf.encode(request))
            .timeout(Some(timeout)),
    );
    let reply = sent.await.map_err(|e| match e.kind() {
        RequestErrorKind::NoResponders => {
            ApiError::unavailable(format!("{subject}: no service answers"))
        }
        RequestErrorKind::TimedOut => ApiError::unavailable(format!(
            "{subject}: no reply within {}",
            humantime::format_duration(timeout)
        )),
        RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
            ApiError::invalid_argument(format!("{subject}: {e}"))
        }
        RequestErrorKind::Other => ApiError::unavailable(format!("{subject}: {e}")),
    })?;
    let is_error = reply
        .headers
        .as_ref()
        .is_some_and(|h| h.get(service::NATS_SERVICE_ERROR_CODE).is_some());
    if is_error {
        let body: ErrorReply = Encoding::Protobuf.decode(&reply.payload)?;
        let error = body.error.unwrap_or_default();
        return Err(ApiError::new(
            code_of(error.status, &error.code),
            error.message,
        ));
    }
    Encoding::Protobuf.decode(&reply.payload).map_err(|e| {
        ApiError::internal(format!(
            "{subject} answered something undecodable: {}",
            e.message
        ))
    })
}

fn code_of(status: u32, code: &str) -> ErrorCode {
    match (status, code) {
        (_, "invalid_argument") => ErrorCode::InvalidArgument,
        (_, "failed_precondition") => ErrorCode::FailedPrecondition,
        (_, "not_found") | (404, _) => ErrorCode::NotFound,
        (_, "conflict") | (409, _) => ErrorCode::Conflict,
        (_, "unavailable") | (503, _) => ErrorCode::Unavailable,
        (400, _) => ErrorCode::InvalidArgument,
        _ => ErrorCode::Internal,
    }
}
