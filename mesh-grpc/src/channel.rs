//! [`MeshChannel`]: tonic's transport replaced by the mesh's outbound stack.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use mesh_core::deadline::{parse_grpc_timeout, Deadline, GRPC_TIMEOUT_HEADER};
use mesh_core::extensions::ServedBy;
use mesh_http::{BoxError, Mesh, MeshClient, ResponseBody};

use crate::status::status_from_error;
use crate::telemetry::{PendingCall, RpcHandles};

/// A gRPC channel to one logical service of the mesh: `Clone` (clones share
/// everything), and a `tower::Service` over HTTP requests that tonic's
/// `GrpcService` covers, so `GreeterClient::new(channel)` works.
///
/// Each call is sent as `http://<service>/<package.Service>/<Method>` through the
/// [`MeshClient`]: the service's discovery, balancer, connection (mTLS when an
/// identity is configured, h2c otherwise; configure the service with
/// `MESH_SERVICE_<NAME>_PROTOCOL=grpc`), deadline, retry and hedging layers.
///
/// gRPC semantics on top of the HTTP client:
/// - every call may be retried, whatever its HTTP method (always `POST`): gRPC
///   retries by status code (gRFC A6), classified by `mesh_core::classify`, and
///   only until the call commits (its response headers arrive, unless the
///   response is trailers-only);
/// - a deadline set with tonic's `Request::set_timeout` (the `grpc-timeout`
///   header) becomes the call's deadline, clipped by the service's timeout and by
///   the deadline of the inbound call being handled, and the time actually left
///   is what `grpc-timeout` tells the server;
/// - `rpc.client.call.duration` is recorded per call (see
///   [`telemetry`](crate::telemetry)), on top of the HTTP client metrics;
/// - a failure with no gRPC answer (deadline passed, no endpoint reachable) comes
///   back as the `tonic::Status` a gRPC client would report
///   ([`status_from_error`](crate::status_from_error)).
#[derive(Clone, Debug)]
pub struct MeshChannel {
    client: MeshClient,
    authority: Authority,
    /// `rpc.client.call.duration` handles, shared by clones.
    rpc: Arc<RpcHandles>,
}

impl MeshChannel {
    /// A channel to `service`, a service `client`'s configuration names. Fails
    /// when the mesh does not know the service (and egress is not allowed) or the
    /// name cannot be a URI authority.
    pub fn new(client: MeshClient, service: &str) -> Result<Self, BoxError> {
        if client.config().service_index(service).is_none() {
            return Err(format!(
                "the mesh has no service `{service}`: configure MESH_SERVICE_{}_ENDPOINTS (or DNS) with MESH_SERVICE_{}_PROTOCOL=grpc",
                env_name(service),
                env_name(service)
            )
            .into());
        }
        let authority = service
            .parse::<Authority>()
            .map_err(|e| format!("the service name `{service}` cannot be a gRPC authority: {e}"))?;
        Ok(MeshChannel {
            client,
            authority,
            rpc: RpcHandles::client(service),
        })
    }

    fn prepare<B>(&self, mut request: Request<B>) -> Request<B> {
        // tonic sends only the path (or its own origin): the mesh routes by host.
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *request.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path");
        let timeout = request
            .headers()
            .get(GRPC_TIMEOUT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        if let Some(timeout) = timeout {
            let extensions = request.extensions_mut();
            let own = Deadline::after(timeout);
            let earliest = Deadline::earliest(Some(own), extensions.get::<Deadline>().copied());
            extensions.insert(earliest.expect("one is set"));
        }
        // Nothing marks the call retryable: the retry layer retries gRPC calls
        // (POSTs all) by status code (gRFC A6), whatever their method.
        request
    }
}

/// `my-api` → `MY_API`, as `MESH_SERVICE_<NAME>_*` variables spell it.
fn env_name(service: &str) -> String {
    service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl<B> tower::Service<Request<B>> for MeshChannel
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = CallFuture;

    /// Always ready: waiting for an endpoint happens per call, bounded by the
    /// service's queue timeout and the call's deadline.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let request = self.prepare(request);
        // Started before the mesh's own layers, so the duration is the call's as
        // the application sees it (queueing, retries and all).
        let pending = PendingCall::start(&self.rpc, &request);
        CallFuture {
            call: tower::Service::call(&mut self.client, request),
            pending: Some(pending),
        }
    }
}

/// The future of a [`MeshChannel`] call: the response, or the failure as the
/// `tonic::Status` a gRPC client would report.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct CallFuture {
    call: mesh_http::client::ResponseFuture,
    /// The call's `rpc.client.call.duration`, recorded when it ends.
    pending: Option<PendingCall>,
}

impl Future for CallFuture {
    type Output = Result<Response<ResponseBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(Pin::new(&mut self.call).poll(cx));
        let pending = self.pending.take().expect("a call ends once");
        Poll::Ready(match result {
            Ok(response) => {
                // tonic hands callers the response's extensions, not its body:
                // the endpoint that answered goes there, as it always did.
                let served_by = response.body().served_by();
                let mut response = pending.respond(response).map(ResponseBody::new);
                if let Some(addr) = served_by {
                    response.extensions_mut().insert(ServedBy(addr));
                }
                Ok(response)
            }
            Err(e) => {
                let status = status_from_error(e);
                pending.failed(status.code());
                Err(Box::new(status) as BoxError)
            }
        })
    }
}

/// `grpc_channel(service)` on the mesh's handles.
pub trait GrpcChannelExt {
    /// A [`MeshChannel`] to `service`.
    fn grpc_channel(&self, service: &str) -> Result<MeshChannel, BoxError>;
}

impl GrpcChannelExt for MeshClient {
    fn grpc_channel(&self, service: &str) -> Result<MeshChannel, BoxError> {
        MeshChannel::new(self.clone(), service)
    }
}

impl GrpcChannelExt for Mesh {
    fn grpc_channel(&self, service: &str) -> Result<MeshChannel, BoxError> {
        MeshChannel::new(self.client(), service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_is_cheap_to_share_across_tasks() {
        fn is<T: Send + Sync + Clone + 'static>() {}
        is::<MeshChannel>();
    }

    #[test]
    fn env_names_follow_the_service_variables() {
        assert_eq!(env_name("my-api.v1"), "MY_API_V1");
    }
}
