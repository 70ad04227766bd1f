//! Connections to a deployment's instances, pooled per HTTP worker. A request takes an idle
//! connection of its deployment, or opens one to the deployment's running instances in turn
//! (round robin), trying the next when an instance does not accept — so a request that could
//! not connect is retried on another instance before anything of it was sent. A connection
//! goes back to the pool once its response has been read to the end; one whose response was
//! cut short is closed.
//!
//! Built on hyper's connection-level client rather than hyper-util's pooled one, which spawns
//! a task per request to return its connection; here nothing is spawned per request (one
//! task per connection drives it), and the pool of a worker is only ever touched by that
//! worker's thread.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1::{self, SendRequest},
    Request, Response,
};
use hyper_util::rt::TokioIo;
use slipway_core::routes::RouteEntry;
use tokio::{net::TcpStream, sync::oneshot};

use crate::table::Table;

/// What goes to an instance: the client's body, or nothing.
pub type UpstreamBody = Either<Upload, Empty<Bytes>>;

/// How long one instance may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an idle connection may take to be ready for its next request.
const FINISHING: Duration = Duration::from_millis(100);
/// How long a connection may have been idle before the instance could be closing it as a
/// request goes out (an app's keep-alive timeout: commonly 2 to 5 s, some much shorter).
const MAY_BE_CLOSING: Duration = Duration::from_millis(250);
/// How long a connection stays open unused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Nothing of the request was sent: it may be tried again.
    #[error("deployment {0} has no running instance")]
    NoInstance(String),
    /// Nothing of the request was sent: it may be tried again.
    #[error("no instance of deployment {deployment} accepts a connection (last: {last})")]
    Refused { deployment: String, last: String },
    /// The request went out (or some of it) and no complete answer came back.
    #[error("the request failed: {0}")]
    Failed(#[source] hyper::Error),
    /// The request went out and no answer began within the time allowed.
    #[error("no answer within {0:?}")]
    Unanswered(Duration),
}

impl UpstreamError {
    /// No connection was made, so no byte of the request went out.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::NoInstance(_) | Self::Refused { .. })
    }
}

/// One HTTP worker's connections to instances, idle ones by deployment.
pub struct Upstreams {
    table: Arc<Table>,
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    next: AtomicUsize,
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

impl Upstreams {
    pub fn new(table: Arc<Table>) -> Arc<Self> {
        Arc::new(Self {
            table,
            idle: Mutex::default(),
            next: AtomicUsize::new(0),
        })
    }

    /// A connection to one of `route`'s deployment's instances: an idle one, or a new one.
    pub async fn connect(
        self: &Arc<Self>,
        route: &Arc<RouteEntry>,
    ) -> Result<Connection, UpstreamError> {
        match self.take_idle(&route.deployment_id).await {
            Some((sender, idle_for)) => Ok(self.connection(sender, Some(idle_for), route)),
            None => self.connect_new(route).await,
        }
    }

    /// A new connection to one of `route`'s deployment's instances.
    pub async fn connect_new(
        self: &Arc<Self>,
        route: &Arc<RouteEntry>,
    ) -> Result<Connection, UpstreamError> {
        let sender = self.open(&route.deployment_id).await?;
        Ok(self.connection(sender, None, route))
    }

    fn connection(
        self: &Arc<Self>,
        sender: SendRequest<UpstreamBody>,
        idle_for: Option<Duration>,
        route: &Arc<RouteEntry>,
    ) -> Connection {
        Connection {
            sender,
            idle_for,
            upstreams: self.clone(),
            route: route.clone(),
        }
    }

    /// The most recently used idle connection of the deployment that is still open, and for
    /// how long it was idle.
    async fn take_idle(
        &self,
        deployment_id: &str,
    ) -> Option<(SendRequest<UpstreamBody>, Duration)> {
        loop {
            let Idle { mut sender, since } = {
                let mut idle = self.lock();
                let list = idle.get_mut(deployment_id)?;
                let taken = list.pop()?;
                if list.is_empty() {
                    idle.remove(deployment_id);
                }
                taken
            };
            // Ready at once unless the connection is still finishing its last exchange (a
            // request body still being sent after an early answer, say): not waited for long.
            if let Ok(Ok(())) = tokio::time::timeout(FINISHING, sender.ready()).await {
                return Some((sender, since.elapsed()));
            }
        }
    }

    /// A new connection to one of the deployment's running instances.
    async fn open(&self, deployment_id: &str) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let instances = self.table.instances_of(deployment_id);
        if instances.is_empty() {
            return Err(UpstreamError::NoInstance(deployment_id.to_string()));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..instances.len() {
            let address = &instances[(start + i) % instances.len()];
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address.as_str())).await
            {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    match http1::handshake(TokioIo::new(stream)).await {
                        Ok((sender, connection)) => {
                            let (deployment, address) =
                                (deployment_id.to_string(), address.clone());
                            tokio::spawn(async move {
                                // With upgrades: a 101 hands the connection to the response.
                                if let Err(e) = connection.with_upgrades().await {
                                    tracing::debug!(deployment, address, error = %e, "connection to an instance ended with an error");
                                }
                            });
                            return Ok(sender);
                        }
                        Err(e) => last = format!("{address}: {e}"),
                    }
                }
                Ok(Err(e)) => last = format!("{address}: {e}"),
                Err(_) => last = format!("{address}: no answer within {CONNECT_TIMEOUT:?}"),
            }
            tracing::debug!(deployment_id, %last, "instance refused a connection; trying the next");
        }
        Err(UpstreamError::Refused {
            deployment: deployment_id.to_string(),
            last,
        })
    }

    fn give_back(&self, deployment_id: &str, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let idle = Idle {
            sender,
            since: Instant::now(),
        };
        let mut pool = self.lock();
        match pool.get_mut(deployment_id) {
            Some(list) => list.push(idle),
            None => {
                pool.insert(deployment_id.to_string(), vec![idle]);
            }
        }
    }

    /// Sweeps the pool every half [`IDLE_TIMEOUT`], for as long as the worker runs.
    pub async fn sweep_for_ever(self: Arc<Self>) {
        let mut every = tokio::time::interval(IDLE_TIMEOUT / 2);
        loop {
            every.tick().await;
            self.sweep();
        }
    }

    /// Closes connections unused for [`IDLE_TIMEOUT`], and those the instance closed.
    fn sweep(&self) {
        let now = Instant::now();
        self.lock().retain(|_, list| {
            list.retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < IDLE_TIMEOUT);
            !list.is_empty()
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Idle>>> {
        // Nothing panics while holding it; a poisoned pool is still a valid pool.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection to an instance, taken for one request.
pub struct Connection {
    sender: SendRequest<UpstreamBody>,
    /// How long it had been idle (`None`: new).
    idle_for: Option<Duration>,
    upstreams: Arc<Upstreams>,
    route: Arc<RouteEntry>,
}

impl Connection {
    /// Sends `request`, and fails with [`UpstreamError::Unanswered`] if no answer began within
    /// `answer_timeout` of the request having gone out whole (an upload takes as long as the
    /// client takes).
    pub async fn send(
        self,
        mut request: Request<UpstreamBody>,
        answer_timeout: Duration,
    ) -> Result<Response<Pooled>, UpstreamError> {
        let uploaded = match request.body_mut() {
            Either::Left(upload) => upload.watcher.uploaded.take(),
            Either::Right(_) => None,
        };
        let answered = self.exchange(request);
        let deadline = async {
            if let Some(uploaded) = uploaded {
                // Sent whole, or ended otherwise (then the exchange fails anyway).
                let _ = uploaded.await;
            }
            tokio::time::sleep(answer_timeout).await;
        };
        tokio::select! {
            answered = answered => answered,
            () = deadline => Err(UpstreamError::Unanswered(answer_timeout)),
        }
    }

    /// Sends `request`. Should an idle connection turn out closed by the instance before the
    /// request went out, it goes on another connection. Should the instance close one that
    /// had been idle a while as the request went out (its keep-alive timeout ran out just
    /// then), a request that may be sent twice (idempotent, without a body) is sent again on a
    /// new connection, as nginx does; any other fails.
    async fn exchange(
        mut self,
        mut request: Request<UpstreamBody>,
    ) -> Result<Response<Pooled>, UpstreamError> {
        let mut again = self
            .idle_for
            .is_some_and(|idle| idle >= MAY_BE_CLOSING)
            .then(|| repeatable(&request))
            .flatten();
        loop {
            match self.sender.try_send_request(request).await {
                Ok(response) => {
                    let watcher = Returns(Some((self.sender, self.upstreams, self.route)));
                    return Ok(response.map(|body| Pooled { body, watcher }));
                }
                Err(mut e) => {
                    if let Some(unsent) = e.take_message().filter(|_| self.idle_for.is_some()) {
                        request = unsent;
                        self = self.upstreams.connect(&self.route).await?;
                        continue;
                    }
                    let error = e.into_error();
                    match again.take() {
                        Some(copy) if error.is_incomplete_message() => {
                            let deployment = &self.route.deployment_id;
                            tracing::debug!(%deployment, "an idle connection closed as the request went out; sending it again");
                            request = copy;
                            self = self.upstreams.connect_new(&self.route).await?;
                        }
                        _ => return Err(UpstreamError::Failed(error)),
                    }
                }
            }
        }
    }
}

/// A copy of `request` if it may be sent twice: an idempotent method and no body.
fn repeatable(request: &Request<UpstreamBody>) -> Option<Request<UpstreamBody>> {
    if !request.method().is_idempotent() || matches!(request.body(), Either::Left(_)) {
        return None;
    }
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

/// A body on its way to or from an instance, and what is done once it has been read to its end
/// ([`AtEnd`]).
pub struct Watched<W: AtEnd> {
    body: Incoming,
    watcher: W,
}

/// What a [`Watched`] body does once it has been read to its end, or has failed.
pub trait AtEnd {
    fn ended(&mut self);
    fn failed(&mut self);
}

impl<W: AtEnd + Unpin> Body for Watched<W> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.watcher.ended(),
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.watcher.ended(),
            Poll::Ready(Some(Err(_))) => self.watcher.failed(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<W: AtEnd> Drop for Watched<W> {
    fn drop(&mut self) {
        // A body with nothing to read (a 204, a HEAD's answer) ends without being polled.
        if self.body.is_end_stream() {
            self.watcher.ended();
        }
    }
}

/// A client's request body on its way to an instance, telling when all of it has gone out.
pub type Upload = Watched<Uploaded>;

pub struct Uploaded {
    /// Told when the body has ended (dropped, when it went away first).
    done: Option<oneshot::Sender<()>>,
    /// What `done` tells, until [`Connection::send`] takes it.
    uploaded: Option<oneshot::Receiver<()>>,
}

impl Upload {
    pub fn new(body: Incoming) -> Self {
        let (done, uploaded) = oneshot::channel();
        let watcher = Uploaded {
            done: Some(done),
            uploaded: Some(uploaded),
        };
        Self { body, watcher }
    }
}

impl AtEnd for Uploaded {
    fn ended(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }

    fn failed(&mut self) {}
}

/// A response body from an instance; its connection goes back to the pool once the body has
/// been read to the end, and is closed if it is dropped before.
pub type Pooled = Watched<Returns>;

impl Pooled {
    /// The connection was taken over (upgraded to another protocol): it never goes back.
    pub fn taken_over(&mut self) {
        self.watcher.0 = None;
    }
}

/// The connection a response came on, until it goes back to the pool.
pub struct Returns(Option<(SendRequest<UpstreamBody>, Arc<Upstreams>, Arc<RouteEntry>)>);

impl AtEnd for Returns {
    fn ended(&mut self) {
        if let Some((sender, upstreams, route)) = self.0.take() {
            upstreams.give_back(&route.deployment_id, sender);
        }
    }

    fn failed(&mut self) {
        // The connection is in an unknown state: it closes when dropped.
        self.0 = None;
    }
}

#[cfg(test)]
mod tests {
    use std::{convert::Infallible, net::SocketAddr};

    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// An instance answering `ok` to every request; how many connections it accepted.
    async fn instance() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let ok = service_fn(|_| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), ok);
                tokio::spawn(served);
            }
        });
        (address, accepted)
    }

    /// The race no test over processes makes happen on cue: the instance closes an idle
    /// connection after the pool handed it out and before the request went out.
    #[tokio::test]
    async fn a_request_an_idle_connection_could_not_take_goes_on_a_new_one() {
        let (address, accepted) = instance().await;
        let table = Table::new();
        let address = address.to_string();
        table.put(crate::table::tests::entry(
            "shop.example",
            "dep_1",
            &[&address],
            1,
        ));
        let route = table.get("shop.example").unwrap();
        let upstreams = Upstreams::new(table);

        // Its driving task gone, the connection hands the request back unsent.
        let stream = TcpStream::connect(address).await.unwrap();
        let (closed, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        drop(connection);
        let taken = upstreams.connection(closed, Some(Duration::from_secs(1)), &route);

        let request = Request::get("/")
            .header(hyper::header::HOST, "shop.example")
            .body(Either::Right(Empty::new()))
            .unwrap();
        let response = taken.send(request, Duration::from_secs(5)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "sent on a new connection"
        );
    }
}
