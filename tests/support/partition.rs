//! A TCP proxy that can cut a network path: forwards bytes both ways until
//! [`Partition::cut`], then drops everything in both directions while keeping every
//! connection open, as a partition does (no reset, no FIN: the client sees silence
//! and only its own timeouts end its requests). Test-only; listens on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Partition {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Partition {
    /// Proxies 127.0.0.1:<free port> to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind partition proxy");
        let addr = listener.local_addr().expect("partition proxy address");
        let cut = Arc::new(AtomicBool::new(false));
        let upstream = upstream.to_owned();
        let task = tokio::spawn({
            let cut = cut.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let cut = cut.clone();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        if cut.load(Ordering::SeqCst) {
                            // New connections after the cut are accepted and ignored.
                            let _held = client;
                            std::future::pending::<()>().await;
                            return;
                        }
                        let Ok(server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            pipe(client_read, server_write, cut.clone()),
                            pipe(server_read, client_write, cut),
                        );
                    });
                }
            }
        });
        Partition { addr, cut, task }
    }

    /// From now on nothing passes, in either direction, on old or new connections.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either closes or the path is cut; after a cut the
/// connection is held open and whatever arrives is discarded.
async fn pipe(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, cut: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.load(Ordering::SeqCst) {
            // Keep reading (so the sender never sees back-pressure either) and drop.
            loop {
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        // Hold the other half open: a partition does not close anything.
                        std::future::pending::<()>().await;
                    }
                    Ok(_) => {}
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
