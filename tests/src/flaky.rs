//! A TCP proxy on loopback that can drop connections: a real network fault between a client
//! and a real service (Postgres, moto), with nothing of either side faked.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards every connection to `target`, except that the next [`FlakyProxy::drop_next`]
/// connections are closed as soon as they are accepted (the client sees the connection
/// reset or closed before any answer). Stops accepting when dropped.
pub struct FlakyProxy {
    addr: SocketAddr,
    to_drop: Arc<AtomicU32>,
    dropped: Arc<AtomicU32>,
    accepted: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

impl FlakyProxy {
    /// Listens on a free port of `127.0.0.1` and forwards to `target` (`host:port`).
    pub async fn start(target: &str) -> FlakyProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("local address");
        let to_drop = Arc::new(AtomicU32::new(0));
        let dropped = Arc::new(AtomicU32::new(0));
        let accepted = Arc::new(AtomicU32::new(0));
        let target = target.to_owned();
        let task = {
            let (to_drop, dropped, accepted) = (to_drop.clone(), dropped.clone(), accepted.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let drop_this = to_drop
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok();
                    if drop_this {
                        dropped.fetch_add(1, Ordering::SeqCst);
                        drop(client);
                        continue;
                    }
                    let target = target.clone();
                    tokio::spawn(async move {
                        if let Ok(mut upstream) = TcpStream::connect(&target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                    });
                }
            })
        };
        FlakyProxy {
            addr,
            to_drop,
            dropped,
            accepted,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the next `n` connections at once.
    pub fn drop_next(&self, n: u32) {
        self.to_drop.store(n, Ordering::SeqCst);
    }

    /// Connections closed so far by [`FlakyProxy::drop_next`].
    pub fn dropped(&self) -> u32 {
        self.dropped.load(Ordering::SeqCst)
    }

    /// Connections accepted so far, dropped ones included.
    pub fn accepted(&self) -> u32 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
