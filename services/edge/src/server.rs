//! The HTTP side: `workers` threads, each a single-threaded runtime with its own listener on
//! the same address (`SO_REUSEPORT`: the kernel spreads connections) and its own pooled client,
//! so a request is accepted, proxied and answered on one thread — nginx's shape. A
//! work-stealing runtime shared by all connections measured 0.56× nginx's requests/s at 16
//! connections on 2 cores, this 1.0× (README "Benchmarks").

use std::{net::SocketAddr, sync::Arc, thread::JoinHandle, time::Duration};

use anyhow::Context;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::watch};

use crate::{proxy, upstream::Upstreams, Shared};

/// How long requests in flight get to finish once the edge is told to stop.
const DRAIN: Duration = Duration::from_secs(10);

/// Running HTTP workers.
pub struct Server {
    pub address: SocketAddr,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Binds `workers` listeners to `address` (port 0: one free port for all) and starts them.
    pub fn start(shared: Arc<Shared>, address: SocketAddr, workers: usize) -> anyhow::Result<Self> {
        let first = bind(address)?;
        let address = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..workers.max(1) {
            listeners.push(bind(address)?);
        }
        let (stop, stopped) = watch::channel(false);
        let workers = listeners
            .into_iter()
            .enumerate()
            .map(|(n, listener)| {
                let (shared, stopped) = (shared.clone(), stopped.clone());
                std::thread::Builder::new()
                    .name(format!("edge-http-{n}"))
                    .spawn(move || serve(shared, listener, stopped))
                    .context("starting an HTTP worker")
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            address,
            stop,
            workers,
        })
    }

    /// Stops accepting; waits until requests in flight are done (at most [`DRAIN`]).
    pub fn stop(self) {
        let _ = self.stop.send(true);
        for worker in self.workers {
            let _ = worker.join();
        }
    }
}

fn bind(address: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }?;
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket
        .bind(address)
        .with_context(|| format!("cannot listen on {address}"))?;
    let listener = socket.listen(1024)?;
    Ok(listener.into_std()?)
}

/// One worker: accepts on its listener until stopped, then drains.
fn serve(shared: Arc<Shared>, listener: std::net::TcpListener, mut stopped: watch::Receiver<bool>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start an HTTP worker's runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(e) => {
                tracing::error!(error = %e, "cannot use the listener");
                return;
            }
        };
        let upstreams = Upstreams::new(shared.table.clone());
        tokio::spawn(upstreams.clone().sweep_for_ever());
        let mut http = auto::Builder::new(TokioExecutor::new());
        // 0 turns it off: hyper then arms no timer per request (~5 % of the edge's CPU).
        if !shared.header_timeout.is_zero() {
            http.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(shared.header_timeout);
        }
        let edge = Arc::new(proxy::Worker { shared, upstreams });
        let graceful = GracefulShutdown::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot accept a connection");
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let client = Arc::new(proxy::Peer::new(peer, &edge.shared.trusted_proxies));
                    let edge = edge.clone();
                    let service = hyper::service::service_fn(move |req| proxy::handle(edge.clone(), client.clone(), req));
                    let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                _ = stopped.wait_for(|stop| *stop) => break,
            }
        }
        // Requests in flight finish; new connections are refused.
        drop(listener);
        if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
            tracing::warn!("requests still in flight after {DRAIN:?}; stopping anyway");
        }
    });
}
