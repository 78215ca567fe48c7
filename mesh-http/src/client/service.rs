//! One logical service: its discovery, its balancer, and its stack of layers down
//! to an endpoint.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use mesh_core::balance::{Balancer, BalancerStats};
use mesh_core::breaker::{BreakerState, CircuitBreaker};
use mesh_core::classify::Classifier;
use mesh_core::config::{AccessLog, ServiceConfig};
use mesh_core::discovery::{Discovery, DnsSettings};
use mesh_core::health::HealthChecker;
use mesh_core::outlier::OutlierDetector;
use mesh_core::retry::{RetryBudget, RetryStats};
use tower::ServiceExt;

use super::dispatch::EndpointDispatch;
use super::health::{self, MakeGrpcProbe};
use super::stack;
use crate::body::{RequestBody, ResponseBody};
use crate::connect::Connect;
use crate::error::BoxError;
use crate::pool::{EndpointPool, PoolSettings};

/// The per-service stack with its types erased, once: each request clones the
/// concrete stack (reference counts only) inside the one allocation its future
/// needs anyway, where a boxed `tower` service would allocate a second time to
/// clone itself.
#[derive(Clone)]
pub(crate) struct ServiceStack(Arc<dyn SendThrough>);

pub(crate) type StackFuture =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, BoxError>> + Send + 'static>>;

trait SendThrough: Send + Sync {
    fn send(&self, request: Request<RequestBody>) -> StackFuture;
}

impl<S> SendThrough for S
where
    S: tower::Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn send(&self, request: Request<RequestBody>) -> StackFuture {
        let mut stack = self.clone();
        // Every layer of the stack is ready at once (the retry layer waits for
        // its inner service per attempt), so the call is made here and the box
        // holds the call's future alone: `oneshot` would box a state machine
        // holding the stack and the request, then move the call's future into
        // it at the first poll.
        match stack.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Box::pin(stack.call(request)),
            Poll::Ready(Err(error)) => Box::pin(std::future::ready(Err(error))),
            // Not the mesh's own layers: waited for with the task's waker.
            Poll::Pending => Box::pin(stack.oneshot(request)),
        }
    }
}

impl ServiceStack {
    pub(crate) fn new<S>(stack: S) -> Self
    where
        S: tower::Service<
                Request<RequestBody>,
                Response = Response<ResponseBody>,
                Error = BoxError,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        ServiceStack(Arc::new(stack))
    }

    fn send(&self, request: Request<RequestBody>) -> StackFuture {
        self.0.send(request)
    }
}

pub(crate) struct ServiceClient {
    name: String,
    budget: Arc<RetryBudget>,
    breaker: Option<Arc<CircuitBreaker>>,
    outlier: Option<Arc<OutlierDetector>>,
    stack: ServiceStack,
    discovery: Discovery,
    follow: tokio::task::JoinHandle<()>,
    /// Stops the health checks (every probe task) when the client goes.
    _health: Option<HealthChecker>,
    balancer: Arc<Balancer<EndpointPool>>,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("service", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for ServiceClient {
    fn drop(&mut self) {
        self.follow.abort();
    }
}

impl ServiceClient {
    pub(crate) fn spawn(
        config: &ServiceConfig,
        dns: &DnsSettings,
        access_log: AccessLog,
        connector: Arc<dyn Connect>,
        grpc_probe: Option<&Arc<dyn MakeGrpcProbe>>,
    ) -> Result<Self, BoxError> {
        let probe = health::probe_for(config, &connector, grpc_probe)?;
        let discovery = Discovery::spawn(&config.name, &config.discovery, dns)?;
        let pool_settings = Arc::new(PoolSettings::new(config, connector));
        let balancer = Balancer::new(
            config.name.as_str(),
            config.balancer.clone(),
            move |endpoint, handle| {
                let reachable = handle.clone();
                let removed = handle;
                EndpointPool::new(
                    endpoint.addr,
                    pool_settings.clone(),
                    move |up| reachable.set_reachable(up),
                    move || removed.is_removed(),
                )
            },
        );
        // Before following discovery, so the first endpoints wait for their first
        // check too.
        let health = probe
            .zip(config.health_check.as_ref())
            .map(|(probe, check)| HealthChecker::spawn(&balancer, check.settings.clone(), probe));
        let follow = balancer.follow(discovery.subscribe());
        let outlier = config
            .outlier
            .clone()
            .map(|settings| Arc::new(OutlierDetector::new(config.name.as_str(), settings)));
        let classifier = Classifier::new(config.retry.retry_on);
        let dispatch = EndpointDispatch::new(
            &config.name,
            config.protocol,
            balancer.clone(),
            outlier.clone().map(|detector| (detector, classifier)),
        );
        let budget = Arc::new(config.retry_budget.build());
        let breaker = config
            .breaker
            .clone()
            .map(|settings| CircuitBreaker::new(config.name.as_str(), settings));
        Ok(ServiceClient {
            name: config.name.clone(),
            stack: stack::service_stack(
                config,
                access_log,
                budget.clone(),
                breaker.clone(),
                dispatch,
            ),
            budget,
            breaker,
            outlier,
            discovery,
            follow,
            _health: health,
            balancer,
        })
    }

    pub(crate) fn retry_stats(&self) -> RetryStats {
        self.budget.stats()
    }

    /// The breaker's state; `None` when the service has no breaker.
    pub(crate) fn breaker_state(&self) -> Option<BreakerState> {
        self.breaker.as_ref().map(|b| b.state())
    }

    /// Ejections outlier detection has made (0 when it is off).
    pub(crate) fn ejections(&self) -> u64 {
        self.outlier.as_ref().map_or(0, |o| o.ejections())
    }

    pub(crate) fn endpoint_stats(&self) -> BalancerStats {
        self.balancer.stats()
    }

    pub(crate) async fn initialized(&self) {
        self.discovery.initialized().await;
    }

    /// A plain function returning the stack's future (not an `async fn`), so the
    /// future's type is concrete and provably `Send`.
    /// Sends `request` through the service's stack; its errors are the stack's,
    /// for the caller to wrap (`Error::from_stack`).
    pub(crate) fn send(&self, request: Request<RequestBody>) -> StackFuture {
        self.stack.send(request)
    }
}
