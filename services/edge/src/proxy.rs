//! One request through the edge: the route of its host, then its deployment's running
//! instances (woken first if the deployment is in standby), the request forwarded with
//! `X-Forwarded-*` headers and the answer returned with `x-slipway-deployment`.

use std::{borrow::Cow, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Either, Empty, Full};
use hyper::{
    body::{Body as _, Incoming},
    header::{self, HeaderMap, HeaderName, HeaderValue},
    http::{request::Parts, uri::PathAndQuery},
    Request, Response, StatusCode, Uri,
};
use ipnet::IpNet;
use slipway_core::{routes::RouteEntry, state::DesiredState};
use tokio::time::Instant;

use crate::{
    upgrade,
    upstream::{Pooled, Upload, UpstreamBody, UpstreamError, Upstreams},
    Shared,
};

/// What one HTTP worker's requests use: the shared state, and the worker's own connections
/// to instances.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub upstreams: Arc<Upstreams>,
}

pub type Body = BoxBody<Bytes, hyper::Error>;

pub const DEPLOYMENT_HEADER: &str = "x-slipway-deployment";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// Headers that concern one connection, not the request (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// How long a client is told to wait before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// The client of one connection: its address as `X-Forwarded-For` names it, and whether it
/// is a trusted proxy (whose `X-Forwarded-Proto` and `X-Forwarded-Host` are passed on).
pub struct Peer {
    address: HeaderValue,
    trusted: bool,
}

impl Peer {
    pub fn new(address: SocketAddr, trusted_proxies: &[IpNet]) -> Self {
        let ip = address.ip().to_canonical();
        let trusted = trusted_proxies.iter().any(|net| net.contains(&ip));
        // An IP address is always a valid header value.
        let address = HeaderValue::try_from(ip.to_string());
        let address = address.unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { address, trusted }
    }
}

/// The log target of the access log (`SLIPWAY_EDGE_ACCESS_LOG`).
pub const ACCESS_TARGET: &str = "slipway::access";

/// Answers `req`; with the access log on, logs a line once the answer's head is ready.
pub async fn handle(
    worker: Arc<Worker>,
    peer: Arc<Peer>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if !worker.shared.access_log {
        return proxied(worker, &peer, req).await;
    }
    let started = Instant::now();
    let method = req.method().clone();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    let host = host.or(req.uri().authority().map(|a| a.as_str()));
    let host = host.unwrap_or("-").to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let res = proxied(worker, &peer, req).await?;
    let deployment = res.headers().get(DEPLOYMENT_HEADER);
    tracing::info!(
        target: ACCESS_TARGET,
        method = %method,
        host = %host,
        path = %path,
        status = res.status().as_u16(),
        deployment = %deployment.and_then(|v| v.to_str().ok()).unwrap_or("-"),
        client = %peer.address.to_str().unwrap_or("-"),
        ms = %format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
        "request"
    );
    Ok(res)
}

async fn proxied(
    worker: Arc<Worker>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let upgrade = upgrade::Requested::take(&mut parts);
    let Some(host) = host_of(&parts.headers, &parts.uri) else {
        return Ok(plain(StatusCode::BAD_REQUEST, "no Host header"));
    };
    let edge = &worker.shared;
    // A request without a body can be sent again: one that reached no instance (the table
    // still lists instances that are gone) waits for the table to move on and goes again.
    let replayable = body.is_end_stream();
    let deadline = Instant::now() + edge.wake_timeout;
    let (route, connection) = loop {
        let route = match route_with_instances(edge, &host, deadline).await {
            Ok(route) => route,
            Err(res) => return Ok(res),
        };
        // An upgraded connection is the upgrade's for good: it takes a new one.
        let connected = match upgrade {
            Some(_) => worker.upstreams.connect_new(&route).await,
            None => worker.upstreams.connect(&route).await,
        };
        match connected {
            Ok(connection) => break (route, connection),
            Err(e) => {
                let deployment = route.deployment_id.as_str();
                if replayable && table_moved_on(edge, &host, &route, deadline).await {
                    tracing::debug!(%deployment, error = %e, "no instance accepted; routing the request again");
                    continue;
                }
                tracing::warn!(%deployment, error = %e, "no instance accepts connections");
                return Ok(counted(edge, refused(deployment), deployment));
            }
        }
    };
    let fallback_host = match parts.headers.contains_key(header::HOST) {
        true => None,
        false => HeaderValue::from_str(&host).ok(),
    };
    let deployment = route.deployment_id.as_str();
    let body = match replayable {
        true => Either::Right(Empty::new()),
        false => Either::Left(Upload::new(body)),
    };
    let mut upstream = upstream_request(parts, body, fallback_host, peer);
    if let Some(upgrade) = &upgrade {
        upgrade.ask(&mut upstream);
    }
    let res = match connection.send(upstream, edge.answer_timeout).await {
        Ok(res) => match upgrade {
            Some(upgrade) => upgrade
                .join(res, deployment)
                .unwrap_or_else(|res| forwarded(*res)),
            None => forwarded(res),
        },
        Err(e @ UpstreamError::Unanswered(_)) => {
            tracing::warn!(%deployment, error = %e, "upstream request timed out");
            plain(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "deployment {deployment} did not answer within {:?}",
                    edge.answer_timeout
                ),
            )
        }
        Err(e) if e.is_connect() => {
            tracing::warn!(%deployment, error = %e, "no instance accepts connections");
            refused(deployment)
        }
        Err(e) => {
            tracing::warn!(%deployment, error = %e, "upstream request failed");
            plain(
                StatusCode::BAD_GATEWAY,
                &format!("deployment {deployment} did not answer"),
            )
        }
    };
    Ok(counted(edge, res, deployment))
}

/// An instance's answer as the client gets it: hop-by-hop headers gone.
fn forwarded(res: Response<Pooled>) -> Response<Body> {
    let (mut parts, body) = res.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body.boxed())
}

/// An answer of `deployment`'s: counted as its traffic, and saying whose it is.
fn counted(edge: &Shared, res: Response<Body>, deployment: &str) -> Response<Body> {
    edge.traffic.count(deployment);
    with_deployment(res, deployment)
}

/// 503: no instance accepted a connection, so nothing of the request was sent and the client
/// may safely try again.
fn refused(deployment: &str) -> Response<Body> {
    unavailable(&format!(
        "no instance of deployment {deployment} accepts connections"
    ))
}

/// The route of `host` with running instances, or the answer when there is none: 404 for an
/// unknown host or an archived deployment; for a deployment in standby, after waking it
/// (holding the request until `deadline`); else 503 with `Retry-After`.
async fn route_with_instances(
    edge: &Shared,
    host: &str,
    deadline: Instant,
) -> Result<Arc<RouteEntry>, Response<Body>> {
    let Some(route) = edge.table.get(host) else {
        return Err(plain(
            StatusCode::NOT_FOUND,
            &format!("no route for {host}"),
        ));
    };
    let deployment = route.deployment_id.clone();
    if route.desired_state == Some(DesiredState::Archived) {
        // Stopped for good: nothing will ever answer here again.
        let res = plain(
            StatusCode::NOT_FOUND,
            &format!("deployment {deployment} behind {host} is archived"),
        );
        return Err(with_deployment(res, &deployment));
    }
    if !route.instances.is_empty() {
        return Ok(route);
    }
    match woken(edge, host, route, deadline).await {
        Some(route) => Ok(route),
        None => Err(with_deployment(
            unavailable(&format!("deployment {deployment} runs no instance")),
            &deployment,
        )),
    }
}

/// A route with running instances for `host`: for a deployment in standby, after waking it
/// (waiting until `deadline`); None when there is none to be had.
async fn woken(
    edge: &Shared,
    host: &str,
    route: Arc<RouteEntry>,
    deadline: Instant,
) -> Option<Arc<RouteEntry>> {
    if route.desired_state != Some(DesiredState::Standby) {
        return None;
    }
    let changed = edge.table.subscribe();
    edge.waker.wake(&route.deployment_id);
    edge.table
        .wait_until(changed, deadline, || {
            edge.table.get(host).filter(|now| !now.instances.is_empty())
        })
        .await
}

/// Waits until `host` no longer routes as `tried` did (another deployment, other instances, a
/// new desired state, or no route): true when it moved on before `deadline`.
async fn table_moved_on(edge: &Shared, host: &str, tried: &RouteEntry, deadline: Instant) -> bool {
    let instances = edge.table.instances_of(&tried.deployment_id);
    let changed = edge.table.subscribe();
    let moved = || match edge.table.get(host) {
        None => Some(()),
        Some(now) => (now.deployment_id != tried.deployment_id
            || now.desired_state != tried.desired_state
            || edge.table.instances_of(&now.deployment_id) != instances)
            .then_some(()),
    };
    edge.table
        .wait_until(changed, deadline, moved)
        .await
        .is_some()
}

/// The request as the instance gets it: in origin form, hop-by-hop headers gone,
/// `X-Forwarded-*` added; `Host` as the client sent it (`fallback_host` when it sent none: the
/// authority of an HTTP/2 request).
fn upstream_request(
    original: Parts,
    body: UpstreamBody,
    fallback_host: Option<HeaderValue>,
    peer: &Peer,
) -> Request<UpstreamBody> {
    let path = original
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut headers = original.headers;
    let host = headers.get(header::HOST).cloned().or(fallback_host);
    strip_hop_by_hop(&mut headers);
    // What a trusted proxy says of the original request stands; anyone else's is replaced.
    let keep = |headers: &HeaderMap, name| peer.trusted && headers.contains_key(name);
    if let Some(host) = host {
        if !keep(&headers, X_FORWARDED_HOST) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        headers.insert(header::HOST, host);
    }
    let forwarded_for = match headers.get(X_FORWARDED_FOR).map(|v| v.as_bytes()) {
        Some(earlier) => {
            HeaderValue::from_bytes(&[earlier, b", ", peer.address.as_bytes()].concat()).ok()
        }
        None => Some(peer.address.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if !keep(&headers, X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    let mut request = Request::new(body);
    *request.method_mut() = original.method;
    *request.uri_mut() = Uri::from(path);
    *request.version_mut() = hyper::Version::HTTP_11;
    *request.headers_mut() = headers;
    request
}

/// The request's host, lower case, without a port: the `Host` header (HTTP/1.1) or the
/// authority (HTTP/2).
pub fn host_of<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<Cow<'a, str>> {
    let raw = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))?;
    let host = match raw.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => raw,
    };
    if host.is_empty() {
        None
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
}

fn with_deployment(mut res: Response<Body>, deployment: &str) -> Response<Body> {
    if let Ok(value) = HeaderValue::from_str(deployment) {
        res.headers_mut().insert(DEPLOYMENT_HEADER, value);
    }
    res
}

/// 503: nothing runs to answer now; the client is told when to try again.
fn unavailable(message: &str) -> Response<Body> {
    let mut res = plain(StatusCode::SERVICE_UNAVAILABLE, message);
    res.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(RETRY_AFTER.as_secs()),
    );
    res
}

fn plain(status: StatusCode, message: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{message}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(host: Option<&str>, uri: &str) -> Option<String> {
        let mut b = Request::builder().uri(uri);
        if let Some(host) = host {
            b = b.header(header::HOST, host);
        }
        let req = b.body(()).unwrap();
        host_of(req.headers(), req.uri()).map(Cow::into_owned)
    }

    #[test]
    fn the_host_is_lower_case_without_its_port() {
        assert_eq!(
            host(Some("Shop-Acme.Slipway.localhost:8080"), "/").as_deref(),
            Some("shop-acme.slipway.localhost")
        );
        assert_eq!(
            host(Some("example.com"), "/").as_deref(),
            Some("example.com")
        );
        // HTTP/2: the authority.
        assert_eq!(
            host(None, "http://h2.example:80/x").as_deref(),
            Some("h2.example")
        );
        assert_eq!(host(None, "/"), None);
    }

    fn nothing() -> UpstreamBody {
        Either::Right(Empty::new())
    }

    #[test]
    fn forwarded_headers_name_the_client_after_earlier_proxies() {
        let peer = Peer::new(SocketAddr::from(([10, 0, 0, 7], 5000)), &[]);
        let parts = || {
            Request::get("http://shop.example/a?b=1")
                .header(header::HOST, "Shop.example:8080")
                .header(X_FORWARDED_FOR, "192.0.2.1")
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let upstream = upstream_request(parts(), nothing(), None, &peer);
        assert_eq!(upstream.uri().to_string(), "/a?b=1");
        let headers = upstream.headers();
        assert_eq!(headers[X_FORWARDED_FOR], "192.0.2.1, 10.0.0.7");
        assert_eq!(headers[X_FORWARDED_HOST], "Shop.example:8080");
        assert_eq!(headers[header::HOST], "Shop.example:8080");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");

        let mut without = parts();
        without.headers.remove(X_FORWARDED_FOR);
        without.headers.remove(header::HOST);
        let fallback = HeaderValue::from_static("shop.example");
        let upstream = upstream_request(without, nothing(), Some(fallback), &peer);
        assert_eq!(upstream.headers()[X_FORWARDED_FOR], "10.0.0.7");
        assert_eq!(upstream.headers()[header::HOST], "shop.example");
    }

    #[test]
    fn only_a_trusted_proxy_says_how_the_original_request_came() {
        let behind_tls = || {
            Request::get("/")
                .header(header::HOST, "shop.example")
                .header(X_FORWARDED_PROTO, "https")
                .header(X_FORWARDED_HOST, "shop.example.com")
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let balancer = Peer::new(SocketAddr::from(([10, 0, 0, 7], 5000)), &trusted);
        let upstream = upstream_request(behind_tls(), nothing(), None, &balancer);
        assert_eq!(upstream.headers()[X_FORWARDED_PROTO], "https");
        assert_eq!(upstream.headers()[X_FORWARDED_HOST], "shop.example.com");
        assert_eq!(upstream.headers()[X_FORWARDED_FOR], "10.0.0.7");

        let anyone = Peer::new(SocketAddr::from(([192, 0, 2, 1], 5000)), &trusted);
        let upstream = upstream_request(behind_tls(), nothing(), None, &anyone);
        assert_eq!(upstream.headers()[X_FORWARDED_PROTO], "http");
        assert_eq!(upstream.headers()[X_FORWARDED_HOST], "shop.example");

        // A trusted proxy that says nothing: the edge's own view.
        let mut plain = behind_tls();
        plain.headers.remove(X_FORWARDED_PROTO);
        plain.headers.remove(X_FORWARDED_HOST);
        let upstream = upstream_request(plain, nothing(), None, &balancer);
        assert_eq!(upstream.headers()[X_FORWARDED_PROTO], "http");
        assert_eq!(upstream.headers()[X_FORWARDED_HOST], "shop.example");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key(header::ACCEPT));
    }
}
