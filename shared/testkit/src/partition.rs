//! A network partition between one process and a server: a TCP proxy whose link can be cut
//! without closing anything. While cut, the process's connections stay open and nothing it
//! sends arrives, nor anything sent to it (unlike SIGSTOP, the process itself runs on: its
//! timers fire, its children exit and are seen to). Healed, what was held goes through.

use std::{io, net::SocketAddr};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpListener, TcpStream,
    },
    sync::watch,
    task::JoinHandle,
};

pub struct Partition {
    /// Where the process connects instead of the server.
    pub address: SocketAddr,
    cut: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl Partition {
    /// A proxy on a free port of 127.0.0.1 to `server`, the link whole.
    pub async fn start(server: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (cut, link) = watch::channel(false);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(server).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = upstream.into_split();
                tokio::spawn(pump(client_read, server_write, link.clone()));
                tokio::spawn(pump(server_read, client_write, link.clone()));
            }
        });
        Ok(Self {
            address,
            cut,
            accepting,
        })
    }

    /// From now on nothing crosses, either way.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// What was held, and everything after it, crosses again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// Copies `from` to `to`, holding each read while the link is cut.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut link: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if link.wait_for(|cut| !*cut).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
