//! A real HTTP backend on loopback that counts what it serves and can be killed
//! (listener and every connection dropped at once, as a crash would) and restarted
//! on the same address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// A backend whose default route `/` answers 200 with its own address.
#[derive(Debug)]
pub struct TestBackend {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    app: Router,
    connections: Option<tokio::task::JoinHandle<()>>,
}

impl TestBackend {
    /// Starts a backend on a fresh loopback port.
    pub async fn start() -> Self {
        Self::start_with(Router::new()).await
    }

    /// Starts a backend serving `app` (plus the counting `/` route) on a fresh
    /// loopback port.
    pub async fn start_with(app: Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let served = Arc::new(AtomicU64::new(0));
        let counter = served.clone();
        let app = app
            .route(
                "/",
                axum::routing::get(move || async move { format!("served by {addr}") }),
            )
            .layer(axum::middleware::from_fn(
                move |req, next: axum::middleware::Next| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async move { next.run(req).await }
                },
            ));
        let mut backend = TestBackend {
            addr,
            served,
            accepted: Arc::new(AtomicU64::new(0)),
            app,
            connections: None,
        };
        backend.serve(listener);
        backend
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests it has received.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Connections it has accepted.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Drops the listener and every open connection at once.
    pub async fn kill(&mut self) {
        if let Some(task) = self.connections.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    pub async fn restart(&mut self) {
        assert!(
            self.connections.is_none(),
            "kill the backend before restarting it"
        );
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind the same address");
        self.serve(listener);
    }

    fn serve(&mut self, listener: TcpListener) {
        let app = self.app.clone();
        let accepted = self.accepted.clone();
        self.connections = Some(tokio::spawn(async move {
            // Connections live in this set, so aborting the task closes them all.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted_conn = listener.accept() => {
                        let Ok((stream, _)) = accepted_conn else { continue };
                        accepted.fetch_add(1, Ordering::Relaxed);
                        let service = TowerToHyperService::new(app.clone());
                        connections.spawn(async move {
                            let _ = auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        }));
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        if let Some(task) = self.connections.take() {
            task.abort();
        }
    }
}
