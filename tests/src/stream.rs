//! A steady stream of requests in the background, for tests that change
//! something (rotate a certificate, restart a backend) while traffic flows and
//! then count what failed.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Sends one request after another until [`stop`](Self::stop), counting
/// successes and failures.
#[derive(Debug)]
pub struct RequestStream {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RequestStream {
    /// Starts calling `request` in a loop; each failure is printed.
    pub fn start<F, Fut, T, E>(request: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send,
        E: std::fmt::Display,
    {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let running = Arc::new(AtomicBool::new(true));
        let task = {
            let (ok, failed, running) = (ok.clone(), failed.clone(), running.clone());
            tokio::spawn(async move {
                while running.load(Ordering::Relaxed) {
                    match request().await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            eprintln!("request failed: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        };
        RequestStream {
            ok,
            failed,
            running,
            task,
        }
    }

    /// Successful requests so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits (up to a generous 60 s) until `target` requests have succeeded.
    pub async fn wait_for_ok(&self, target: u64) {
        tokio::time::timeout(Duration::from_secs(60), async {
            while self.ok() < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the request stream keeps going")
    }

    /// Stops the stream and returns (succeeded, failed).
    pub async fn stop(self) -> (u64, u64) {
        self.running.store(false, Ordering::Relaxed);
        self.task.await.expect("the stream's task");
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
