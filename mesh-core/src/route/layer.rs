//! [`RouteLayer`]: matches each request once and tells the layers below which
//! route's policy it follows.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::Request;

use super::RouteTable;

/// Puts the [`SelectedRoute`](super::SelectedRoute) of each request in its
/// extensions (see the module docs). A service without routes adds nothing:
/// the layers below then use their own policy, which is the service's.
#[derive(Debug, Clone)]
pub struct RouteLayer {
    table: Arc<RouteTable>,
}

impl RouteLayer {
    /// A layer selecting routes from `table`.
    pub fn new(table: Arc<RouteTable>) -> Self {
        RouteLayer { table }
    }
}

impl<S> tower::Layer<S> for RouteLayer {
    type Service = RouteService<S>;
    fn layer(&self, inner: S) -> RouteService<S> {
        RouteService {
            inner,
            table: self.table.clone(),
        }
    }
}

/// The service [`RouteLayer`] makes.
#[derive(Debug, Clone)]
pub struct RouteService<S> {
    inner: S,
    table: Arc<RouteTable>,
}

impl<S, B> tower::Service<Request<B>> for RouteService<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        if !self.table.is_empty() {
            let route = self
                .table
                .select(request.method(), request.uri().path())
                .clone();
            request.extensions_mut().insert(route);
        }
        self.inner.call(request)
    }
}
