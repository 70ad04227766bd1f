//! HTTP/1.1 upgrades through the edge (WebSocket, for one): a request that asks to switch
//! protocols goes to an instance on a new connection with its `Upgrade` header kept; when the
//! instance switches (101), the client's connection and the instance's are joined and bytes
//! are copied both ways until either side closes. Any other answer is an ordinary response.

use http_body_util::{BodyExt, Empty};
use hyper::{
    header::{self, HeaderValue},
    http::request::Parts,
    upgrade::OnUpgrade,
    Request, Response, StatusCode, Version,
};
use hyper_util::rt::TokioIo;

use crate::{
    proxy::{strip_hop_by_hop, Body},
    upstream::Pooled,
};

/// What an upgrade needs from the client's request: the protocol it asks for, and its
/// connection once hyper hands it over.
pub struct Requested {
    protocol: HeaderValue,
    client: OnUpgrade,
}

impl Requested {
    /// The upgrade `parts` ask for (HTTP/1.1, `Connection: upgrade` and `Upgrade`), taken out
    /// of them; None for any other request.
    pub fn take(parts: &mut Parts) -> Option<Self> {
        if parts.version != Version::HTTP_11
            || !names_upgrade(parts.headers.get_all(header::CONNECTION))
        {
            return None;
        }
        let protocol = parts.headers.get(header::UPGRADE)?.clone();
        // HTTP/2 is the edge's to speak (h2c with prior knowledge), not something to hand
        // one connection's worth of to an instance: such a request is served as HTTP/1.1.
        if protocol.as_bytes().eq_ignore_ascii_case(b"h2c") {
            return None;
        }
        let client = parts.extensions.remove::<OnUpgrade>()?;
        Some(Self { protocol, client })
    }

    /// Asks the instance for the same upgrade (the edge dropped the hop-by-hop headers).
    pub fn ask<B>(&self, request: &mut Request<B>) {
        let headers = request.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, self.protocol.clone());
    }

    /// The instance's answer: if it switched protocols, the 101 for the client (with the
    /// protocol it chose), both connections joined once hyper hands them over; else the
    /// answer as it came.
    pub fn join(
        self,
        mut answer: Response<Pooled>,
        deployment: &str,
    ) -> Result<Response<Body>, Box<Response<Pooled>>> {
        if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(Box::new(answer));
        }
        let Some(instance) = answer.extensions_mut().remove::<OnUpgrade>() else {
            return Err(Box::new(answer));
        };
        // The connection is the upgraded stream's now, never the pool's again.
        answer.body_mut().taken_over();
        let protocol = answer
            .headers()
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or(self.protocol);
        let deployment = deployment.to_string();
        tokio::spawn(async move {
            let (client, instance) = match tokio::try_join!(self.client, instance) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(%deployment, error = %e, "an upgrade did not complete");
                    return;
                }
            };
            let (mut client, mut instance) = (TokioIo::new(client), TokioIo::new(instance));
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut instance).await {
                tracing::debug!(%deployment, error = %e, "an upgraded connection ended with an error");
            }
        });
        let (mut parts, _) = answer.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
        let nothing = Empty::new().map_err(|never| match never {}).boxed();
        Ok(Response::from_parts(parts, nothing))
    }
}

/// Whether the `Connection` header's tokens include `upgrade`.
fn names_upgrade<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    values
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(version: Version, connection: &str, upgrade: Option<&str>) -> Parts {
        let mut b = Request::get("/chat")
            .version(version)
            .header(header::CONNECTION, connection);
        if let Some(upgrade) = upgrade {
            b = b.header(header::UPGRADE, upgrade);
        }
        let mut parts = b.body(()).unwrap().into_parts().0;
        // What hyper's server puts there for an HTTP/1.1 request.
        parts
            .extensions
            .insert(hyper::upgrade::on(Request::new(())));
        parts
    }

    #[test]
    fn only_an_http11_request_naming_upgrade_in_connection_asks_for_one() {
        let asked = Requested::take(&mut parts(
            Version::HTTP_11,
            "keep-alive, Upgrade",
            Some("websocket"),
        ));
        assert_eq!(
            asked.map(|r| r.protocol),
            Some(HeaderValue::from_static("websocket"))
        );
        assert!(Requested::take(&mut parts(
            Version::HTTP_11,
            "keep-alive",
            Some("websocket")
        ))
        .is_none());
        assert!(Requested::take(&mut parts(Version::HTTP_11, "upgrade", None)).is_none());
        let h2c = &mut parts(Version::HTTP_11, "Upgrade, HTTP2-Settings", Some("h2c"));
        assert!(Requested::take(h2c).is_none());
        assert!(
            Requested::take(&mut parts(Version::HTTP_10, "upgrade", Some("websocket"))).is_none()
        );
    }
}
