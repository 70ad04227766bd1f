//! Connections to a deployment's instances, for the HTTP client: the upstream URI names the
//! deployment (`http://<deployment_id>/…`), and a new connection goes to its running instances
//! in turn (round robin), trying the next one when an instance does not accept — so a request
//! that could not connect is retried on another instance before anything of it was sent.
//! Connections are pooled per deployment by the client.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::table::Table;

/// How long one instance may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the upstream URI names no deployment")]
    NoDeployment,
    #[error("deployment {0} has no running instance")]
    NoInstance(String),
    #[error("no instance of deployment {deployment} accepts a connection (last: {last})")]
    Refused { deployment: String, last: String },
}

#[derive(Clone)]
pub struct InstanceConnector {
    table: Arc<Table>,
    next: Arc<AtomicUsize>,
}

impl InstanceConnector {
    pub fn new(table: Arc<Table>) -> Self {
        Self {
            table,
            next: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl tower_service::Service<Uri> for InstanceConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let table = self.table.clone();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let deployment = uri.host().ok_or(ConnectError::NoDeployment)?.to_string();
            let instances = table.instances_of(&deployment);
            if instances.is_empty() {
                return Err(ConnectError::NoInstance(deployment));
            }
            let mut last = String::new();
            for i in 0..instances.len() {
                let address = &instances[(start + i) % instances.len()];
                match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
                    Ok(Ok(stream)) => {
                        let _ = stream.set_nodelay(true);
                        return Ok(TokioIo::new(stream));
                    }
                    Ok(Err(e)) => last = format!("{address}: {e}"),
                    Err(_) => last = format!("{address}: no answer within {CONNECT_TIMEOUT:?}"),
                }
                tracing::debug!(deployment, %last, "instance refused a connection; trying the next");
            }
            Err(ConnectError::Refused { deployment, last })
        })
    }
}
