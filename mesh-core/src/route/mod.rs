//! Per-route policies: a service's requests matched by method and path, each
//! route overriding the service's timeout, per-try timeout, retries, hedging and
//! fault injection.
//!
//! Why resolve once? The deadline, fault and retry layers each need the policy of
//! the request's route. Matching in each of them would repeat the work and could
//! disagree; instead [`RouteLayer`], at the top of the outbound stack, matches the
//! request once and puts a [`SelectedRoute`] (an `Arc` of the resolved
//! [`RoutePolicy`]) in its extensions. The layers below read it, and fall back
//! to their own (the service's) policy when it is absent, so each still works
//! alone.
//!
//! Routes come from `MESH_CONFIG_FILE` (`[[services.<name>.routes]]`) and from a
//! gRPC service config (`GRPC_SERVICE_CONFIG`, see [`grpc`]); the first route that
//! matches wins, else the service's own policy applies.
//!
//! ```
//! use mesh_core::route::{PathMatch, RouteConfig, RouteMatch, RouteTable};
//! use mesh_core::config::ServiceConfig;
//! use mesh_core::discovery::DiscoverySource;
//!
//! let mut service = ServiceConfig::new("payments", DiscoverySource::Static(Vec::new()));
//! let mut pay = RouteConfig::new("pay", RouteMatch {
//!     methods: Some(vec![http::Method::POST]),
//!     path: PathMatch::Exact("/pay".into()),
//! });
//! pay.overrides.max_attempts = Some(1);
//! service.routes.push(pay);
//! let table = RouteTable::for_service(&service);
//! let selected = table.select(&http::Method::POST, "/pay");
//! assert_eq!(selected.policy().retry().max_attempts, 1);
//! assert_eq!(table.select(&http::Method::GET, "/items").policy().retry().max_attempts, 3);
//! ```

pub mod grpc;
mod layer;

use std::sync::Arc;
use std::time::Duration;

use http::Method;

pub use layer::{RouteLayer, RouteService};

use crate::classify::Classifier;
use crate::config::ServiceConfig;
use crate::fault::{AbortFault, DelayFault, Faults};
use crate::retry::{HedgeDelay, MethodSet, RetryBackoff, RetryOn, RetryPolicy};

/// Which paths a route matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// Every path.
    Any,
    /// Exactly this path (the query string is not part of it).
    Exact(String),
    /// Paths starting with this (`/api/`, or a gRPC service's `/pkg.Service/`).
    Prefix(String),
}

impl PathMatch {
    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Any => true,
            PathMatch::Exact(p) => p == path,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        }
    }
}

/// What a request must look like for a route to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The HTTP methods matched; `None` for any.
    pub methods: Option<Vec<Method>>,
    /// The paths matched.
    pub path: PathMatch,
}

impl RouteMatch {
    /// Whether a request with `method` and `path` matches. Allocation-free: it
    /// runs on every request.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        self.methods
            .as_ref()
            .is_none_or(|methods| methods.contains(method))
            && self.path.matches(path)
    }
}

/// What a route changes from its service's policy; `None` keeps the service's.
/// Fields holding an `Option` themselves can turn a setting off for the route
/// (`Some(None)`).
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct RouteOverrides {
    /// Overall timeout (`TIMEOUT`).
    pub timeout: Option<Option<Duration>>,
    /// Per-attempt timeout (`PER_TRY_TIMEOUT`).
    pub per_try_timeout: Option<Option<Duration>>,
    /// Attempts, counting the first (`RETRY_MAX_ATTEMPTS`).
    pub max_attempts: Option<u32>,
    /// Failures retried, gRPC codes included (`RETRY_ON`).
    pub retry_on: Option<RetryOn>,
    /// Methods retried without the caller marking the request (`RETRY_METHODS`).
    pub retry_methods: Option<MethodSet>,
    /// Wait between attempts (`RETRY_BACKOFF`).
    pub backoff: Option<RetryBackoff>,
    /// Hedging (`HEDGE_DELAY`).
    pub hedge_delay: Option<Option<HedgeDelay>>,
    /// Injected delay (`FAULT_DELAY`).
    pub fault_delay: Option<Option<DelayFault>>,
    /// Injected abort (`FAULT_ABORT`).
    pub fault_abort: Option<Option<AbortFault>>,
}

/// One route of a service: a name (a bounded metric label), what it matches and
/// what it overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// The route's name, as configured (or its path when none was given).
    pub name: String,
    /// What requests it applies to.
    pub matches: RouteMatch,
    /// What it changes from the service's policy.
    pub overrides: RouteOverrides,
}

impl RouteConfig {
    /// A route named `name` matching `matches`, changing nothing yet.
    pub fn new(name: impl Into<String>, matches: RouteMatch) -> Self {
        RouteConfig {
            name: name.into(),
            matches,
            overrides: RouteOverrides::default(),
        }
    }
}

/// A route's name, for metric labels and logs: from the configuration, so the
/// set of values is bounded (never a raw path). Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteName(Arc<str>);

impl RouteName {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string, for labels that take one without copying.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl std::fmt::Display for RouteName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The policy a request follows: its route's overrides laid over its service's
/// settings, resolved once when the client is built.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    name: Option<RouteName>,
    timeout: Option<Duration>,
    retry: RetryPolicy,
    classifier: Classifier,
    faults: Faults,
}

impl RoutePolicy {
    /// The service's own policy (requests no route matches).
    pub fn for_service(service: &ServiceConfig) -> Self {
        RoutePolicy::new(None, service.timeout, service.retry.clone(), service.faults)
    }

    /// A policy from its parts; `name` is `None` for a service's own policy.
    pub fn new(
        name: Option<&str>,
        timeout: Option<Duration>,
        retry: RetryPolicy,
        faults: Faults,
    ) -> Self {
        RoutePolicy {
            name: name.map(|n| RouteName(Arc::from(n))),
            timeout,
            classifier: Classifier::new(retry.retry_on),
            retry,
            faults,
        }
    }

    /// `route`'s overrides laid over `self`.
    fn overridden(&self, route: &RouteConfig) -> Self {
        let o = &route.overrides;
        let mut retry = self.retry.clone();
        if let Some(v) = o.per_try_timeout {
            retry.per_try_timeout = v;
        }
        if let Some(v) = o.max_attempts {
            retry.max_attempts = v;
        }
        if let Some(v) = o.retry_on {
            retry.retry_on = v;
        }
        if let Some(v) = &o.retry_methods {
            retry.methods = v.clone();
        }
        if let Some(v) = o.backoff {
            retry.backoff = v;
        }
        if let Some(v) = o.hedge_delay {
            retry.hedge_delay = v;
        }
        let faults = Faults {
            delay: o.fault_delay.unwrap_or(self.faults.delay),
            abort: o.fault_abort.unwrap_or(self.faults.abort),
        };
        RoutePolicy::new(
            Some(&route.name),
            o.timeout.unwrap_or(self.timeout),
            retry,
            faults,
        )
    }

    /// The route's name; `None` for the service's own policy.
    pub fn name(&self) -> Option<&RouteName> {
        self.name.as_ref()
    }

    /// Time allowed for the whole request; `None` for no limit of its own.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Retries, hedging and per-try timeout.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// The classifier under this policy's retry conditions.
    pub fn classifier(&self) -> Classifier {
        self.classifier
    }

    /// Injected faults.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }
}

/// The request extension [`RouteLayer`] sets: the policy of the request's route,
/// shared (cloning it is a reference count).
///
/// Telemetry may label requests with [`name`](Self::name): it is bounded by the
/// configuration.
#[derive(Debug, Clone)]
pub struct SelectedRoute(Arc<RoutePolicy>);

impl SelectedRoute {
    /// Wraps a policy.
    pub fn new(policy: RoutePolicy) -> Self {
        SelectedRoute(Arc::new(policy))
    }

    /// The policy.
    pub fn policy(&self) -> &RoutePolicy {
        &self.0
    }

    /// The route's name; `None` when no route matched (the service's policy).
    pub fn name(&self) -> Option<&RouteName> {
        self.0.name()
    }
}

/// A service's routes in order, each with its resolved policy, and the service's
/// own policy for requests none matches.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<(RouteMatch, SelectedRoute)>,
    default: SelectedRoute,
}

impl RouteTable {
    /// The table of `service`'s routes, each laid over the service's settings.
    pub fn for_service(service: &ServiceConfig) -> Self {
        let base = RoutePolicy::for_service(service);
        let routes = service
            .routes
            .iter()
            .map(|r| (r.matches.clone(), SelectedRoute::new(base.overridden(r))))
            .collect();
        RouteTable {
            routes,
            default: SelectedRoute::new(base),
        }
    }

    /// The first route matching `method` and `path`, else the service's policy.
    pub fn select(&self, method: &Method, path: &str) -> &SelectedRoute {
        self.routes
            .iter()
            .find(|(m, _)| m.matches(method, path))
            .map_or(&self.default, |(_, route)| route)
    }

    /// Whether the service has no routes (every request follows its own policy).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Whether any route (or the service) injects faults.
    pub fn injects_faults(&self) -> bool {
        self.default.policy().faults.is_active()
            || self
                .routes
                .iter()
                .any(|(_, r)| r.policy().faults.is_active())
    }
}

#[cfg(test)]
mod tests;
