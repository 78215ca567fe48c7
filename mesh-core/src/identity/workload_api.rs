//! Identity from the SPIFFE Workload API (a SPIRE agent, say) at
//! `SPIFFE_ENDPOINT_SOCKET`.
//!
//! The agent streams `FetchX509SVID` responses: our SVID chain and key, our
//! trust domain's bundle and the federated bundles. Each response is validated
//! exactly as the files are ([`Material::validate`]) and swapped in whole, so a
//! handshake never mixes generations; a response that does not validate is
//! refused and the last good identity stays. When the stream breaks (the agent
//! restarts, say), the identity in force stays too, and the stream is reopened
//! with backoff.

use std::time::Duration;

use crate::config::settings::{self, Scope};
use crate::config::value;

/// Where the Workload API is and how long start-up waits for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadApiConfig {
    /// The agent's address as `SPIFFE_ENDPOINT_SOCKET` spells it:
    /// `unix:///run/spire/agent.sock` (or `unix:/…`, `tcp:127.0.0.1:8081`).
    pub socket: String,
    /// How long start-up waits for the first valid SVID before failing
    /// (`MESH_WORKLOAD_API_TIMEOUT`).
    pub startup_timeout: Duration,
}

impl WorkloadApiConfig {
    /// The Workload API at `socket`, with the documented start-up timeout.
    pub fn new(socket: impl Into<String>) -> Self {
        Self {
            socket: socket.into(),
            startup_timeout: default_startup_timeout(),
        }
    }

    /// Waits `timeout` at start-up for the first SVID.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }
}

/// `MESH_WORKLOAD_API_TIMEOUT`'s documented default: the one source of truth.
pub(crate) fn default_startup_timeout() -> Duration {
    let def = settings::find(Scope::Global, "WORKLOAD_API_TIMEOUT").expect("registered");
    value::duration(def.default.trim_matches('`')).expect("the documented default parses")
}

#[cfg(feature = "workload-api")]
pub(crate) use client::start;

#[cfg(feature = "workload-api")]
mod client {
    use std::sync::Arc;
    use std::time::Duration;

    use futures_util::StreamExt;
    use parking_lot::Mutex;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use spiffe::transport::Endpoint;
    use spiffe::{WorkloadApiClient, WorkloadApiError, X509Context};
    use tokio::sync::oneshot;

    use super::WorkloadApiConfig;
    use crate::backoff::ExponentialBackoff;
    use crate::identity::snapshot::Identity;
    use crate::identity::source::WeakSource;
    use crate::identity::validate::Material;
    use crate::identity::{IdentityError, IdentitySource, TrustDomain};
    use crate::metric_names::{self, label};

    /// Between attempts to reopen the stream. The agent is local, so retrying
    /// fast is cheap; the cap bounds the wait after the agent comes back.
    fn reconnect_backoff() -> ExponentialBackoff {
        ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(5), 0.1)
    }

    /// Value of `mesh.source` on `mesh.config.reloads` for Workload API updates.
    const SOURCE: &str = "workload_api";

    /// Connects, waits for the first valid identity (up to the start-up
    /// timeout), and leaves a task following the stream for as long as the
    /// returned source (or a clone) lives.
    pub(crate) async fn start(config: &WorkloadApiConfig) -> Result<IdentitySource, IdentityError> {
        let endpoint =
            Endpoint::parse(&config.socket).map_err(|e| IdentityError::WorkloadApiAddress {
                socket: config.socket.clone(),
                detail: e.to_string(),
            })?;
        let (first_tx, first_rx) = oneshot::channel();
        let follower = Follower {
            endpoint,
            socket: config.socket.clone(),
            last_error: Arc::new(Mutex::new(None)),
        };
        let last_error = follower.last_error.clone();
        tokio::spawn(follower.run(first_tx));
        match tokio::time::timeout(config.startup_timeout, first_rx).await {
            Ok(Ok(source)) => Ok(source),
            // Timed out (dropping `first_rx` stops the task), or the task ended.
            Ok(Err(_)) | Err(_) => Err(IdentityError::WorkloadApiTimeout {
                socket: config.socket.clone(),
                waited: config.startup_timeout,
                last_error: last_error.lock().take(),
            }),
        }
    }

    /// Where the task delivers identities: to start-up, then into the source.
    enum Target {
        First(oneshot::Sender<IdentitySource>),
        Source(WeakSource, oneshot::Receiver<()>),
    }

    struct Follower {
        endpoint: Endpoint,
        socket: String,
        /// Read by start-up to say why nothing arrived.
        last_error: Arc<Mutex<Option<String>>>,
    }

    impl Follower {
        async fn run(self, first: oneshot::Sender<IdentitySource>) {
            let mut target = Target::First(first);
            let mut failures: u32 = 0;
            let backoff = reconnect_backoff();
            loop {
                // One stream, read until it ends or the source is gone.
                let Some(problem) = self.follow_stream(&mut target, &mut failures).await else {
                    return;
                };
                self.stream_failed(&problem, failures);
                let wait = backoff.delay(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stopped(&mut target) => return,
                }
            }
        }

        /// Opens a stream and applies its updates. Returns why it ended, or
        /// `None` when there is no one left to deliver to.
        async fn follow_stream(&self, target: &mut Target, failures: &mut u32) -> Option<String> {
            let opened = async {
                let client = WorkloadApiClient::connect(self.endpoint.clone())
                    .await
                    .map_err(|e| format!("cannot connect: {}", with_causes(&e)))?;
                client
                    .stream_x509_contexts()
                    .await
                    .map_err(|e| format!("FetchX509SVID failed: {}", with_causes(&e)))
            };
            let mut stream = tokio::select! {
                opened = opened => match opened {
                    Ok(stream) => stream,
                    Err(problem) => return Some(problem),
                },
                () = stopped(target) => return None,
            };
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    () = stopped(target) => return None,
                };
                let update = match item {
                    None => return Some("the stream ended".to_owned()),
                    Some(Err(e)) if breaks_stream(&e) => return Some(e.to_string()),
                    Some(Err(e)) => Err(e.to_string()),
                    Some(Ok(context)) => identity_of(&context),
                };
                match update {
                    Ok(identity) => {
                        if *failures > 0 {
                            tracing::info!(socket = %self.socket, "Workload API stream restored");
                        }
                        *failures = 0;
                        if !self.apply(target, identity)? {
                            return None;
                        }
                    }
                    // A bad update is refused on its own; the stream goes on.
                    Err(detail) => self.refused(detail),
                }
            }
        }

        /// Makes `identity` current. `None` when the source is gone.
        fn apply(&self, target: &mut Target, identity: Identity) -> Option<bool> {
            match target {
                Target::First(_) => {
                    let (stop_tx, stop_rx) = oneshot::channel();
                    tracing::info!(
                        socket = %self.socket,
                        spiffe_id = %identity.spiffe_id(),
                        serial = identity.serial(),
                        "identity from the Workload API"
                    );
                    let source = IdentitySource::pushed(identity, stop_tx);
                    let weak = source.downgrade();
                    let Target::First(first) =
                        std::mem::replace(target, Target::Source(weak, stop_rx))
                    else {
                        unreachable!("matched above")
                    };
                    // Start-up gave up waiting: nobody will use this source.
                    first.send(source).ok()?;
                    Some(true)
                }
                Target::Source(weak, _) => {
                    let source = weak.upgrade()?;
                    if identity.same_material(&source.current()) {
                        return Some(true);
                    }
                    tracing::info!(
                        socket = %self.socket,
                        spiffe_id = %identity.spiffe_id(),
                        serial = identity.serial(),
                        "identity rotated by the Workload API"
                    );
                    source.replace(identity);
                    count("ok");
                    Some(true)
                }
            }
        }

        fn refused(&self, detail: String) {
            let error = IdentityError::WorkloadApiUpdate {
                socket: self.socket.clone(),
                detail,
            };
            // Each refusal is its own event (the agent sent a bad SVID), so
            // each is logged.
            tracing::warn!(%error, "keeping the last good identity");
            count("rejected");
            *self.last_error.lock() = Some(error.to_string());
        }

        /// Counts every failure; logs the first of a run at warn level and
        /// the rest at debug, so an agent that is down for an hour does not
        /// flood the log.
        fn stream_failed(&self, problem: &str, failures_before: u32) {
            count("error");
            if failures_before == 0 {
                tracing::warn!(
                    socket = %self.socket,
                    problem,
                    "Workload API stream lost; keeping the identity in force and reconnecting with backoff"
                );
            } else {
                tracing::debug!(socket = %self.socket, problem, "Workload API still unreachable");
            }
            *self.last_error.lock() = Some(problem.to_owned());
        }
    }

    /// Completes when there is no one left to deliver identities to.
    async fn stopped(target: &mut Target) {
        match target {
            Target::First(first) => first.closed().await,
            Target::Source(_, stop) => {
                let _ = stop.await;
            }
        }
    }

    /// `error: cause: cause`, so "transport error" says which (no such file…).
    fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            let more = cause.to_string();
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = cause.source();
        }
        text
    }

    /// Whether an error is the stream failing (reconnect) rather than one bad
    /// update (refuse it, keep reading).
    fn breaks_stream(error: &WorkloadApiError) -> bool {
        matches!(
            error,
            WorkloadApiError::Transport(_)
                | WorkloadApiError::EmptyResponse
                | WorkloadApiError::NoIdentityIssued
                | WorkloadApiError::PermissionDenied(_)
        )
    }

    fn count(outcome: &'static str) {
        metrics::counter!(
            metric_names::CONFIG_RELOADS.name,
            label::SOURCE => SOURCE,
            label::OUTCOME => outcome
        )
        .increment(1);
    }

    /// Validates the default SVID of an update with its bundles.
    fn identity_of(context: &X509Context) -> Result<Identity, String> {
        let svid = context.default_svid().ok_or("the response holds no SVID")?;
        let chain = svid
            .cert_chain()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            svid.private_key().as_bytes().to_vec(),
        ));
        let own = svid.spiffe_id().trust_domain();
        let der = |bundle: &spiffe::X509Bundle| -> Vec<CertificateDer<'static>> {
            bundle
                .authorities()
                .iter()
                .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                .collect()
        };
        let bundles = context.bundle_set();
        let own_bundle = bundles.get_ref(own).map(|b| der(b)).unwrap_or_default();
        let federated = bundles
            .iter()
            .filter(|(domain, _)| *domain != own)
            .map(|(domain, bundle)| {
                TrustDomain::new(domain.as_str())
                    .map(|d| (d, der(bundle)))
                    .map_err(|e| format!("federated bundle: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Material {
            chain,
            key,
            own_bundle,
            federated,
        }
        .validate()
        .map_err(|e| e.to_string())
    }
}
