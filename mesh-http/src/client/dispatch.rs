//! The innermost service of a client stack: pick an endpoint, check a connection
//! out of its pool, send the request.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Uri};
use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use mesh_core::balance::{Balancer, EndpointHandle, Picked};
use mesh_core::classify::Classifier;
use mesh_core::clock;
use mesh_core::config::Protocol;
use mesh_core::deadline::{self, Deadline};
use mesh_core::extensions::TriedEndpoints;
use mesh_core::outlier::OutlierDetector;
use mesh_core::replay::ReplayBody;
use tokio::time::Instant;

use crate::body::{AttemptBody, RequestBody, ResponseBody};
use crate::error::{BoxError, Error};
use crate::pool::{give_back, Conn, EndpointPool, Http1Conn, PoolInner};

/// Times a request is moved off a pooled connection that closed before the request
/// was written to it.
const STALE_CONNECTION_ATTEMPTS: usize = 3;

/// Sends each request to one endpoint the balancer picks, avoiding those named in
/// the request's [`TriedEndpoints`], and records the pick in the call's
/// [`AttemptLog`](mesh_core::retry::AttemptLog) (which the attempt's body
/// carries); the response's body names the endpoint that answered
/// ([`ResponseBody::served_by`]).
///
/// A connection that cannot be opened fails the attempt with a connect error: the
/// retry layer above moves the request to another endpoint (a transparent retry,
/// drawn from the budget), so there is one retry mechanism, not two.
#[derive(Clone)]
pub(crate) struct EndpointDispatch {
    inner: Arc<DispatchInner>,
}

struct DispatchInner {
    service: String,
    protocol: Protocol,
    balancer: Arc<Balancer<EndpointPool>>,
    outlier: Option<Outlier>,
    host: HostCache,
}

/// Outlier accounting: every attempt's outcome, classified by the one classifier,
/// is reported for the endpoint that served it (or failed to).
struct Outlier {
    detector: Arc<OutlierDetector>,
    classifier: Classifier,
}

impl EndpointDispatch {
    pub(crate) fn new(
        service: &str,
        protocol: Protocol,
        balancer: Arc<Balancer<EndpointPool>>,
        outlier: Option<(Arc<OutlierDetector>, Classifier)>,
    ) -> Self {
        EndpointDispatch {
            inner: Arc::new(DispatchInner {
                service: service.to_string(),
                protocol,
                balancer,
                outlier: outlier.map(|(detector, classifier)| Outlier {
                    detector,
                    classifier,
                }),
                host: HostCache::default(),
            }),
        }
    }
}

impl tower::Service<Request<ReplayBody<RequestBody>>> for EndpointDispatch {
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    /// Always ready: waiting for an endpoint is bounded per request by the
    /// balancer's queue timeout.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReplayBody<RequestBody>>) -> Self::Future {
        // Made ready here, not in the future: an `async fn` keeps its arguments
        // for its whole life, so the request would be stored in it twice.
        let inner = &self.inner;
        let mut request = request.map(AttemptBody);
        // Rewritten where it lies: passing the request through by value would
        // copy it in and out.
        if let Err(e) = to_wire_form(&mut request, inner.protocol, &inner.host) {
            return Box::pin(std::future::ready(Err(e.into())));
        }
        // Endpoints earlier attempts used, avoided when others are ready.
        let avoid: Vec<SocketAddr> = request
            .extensions_mut()
            .remove::<TriedEndpoints>()
            .map(|t| t.0)
            .unwrap_or_default();
        Box::pin(Arc::clone(inner).send_to_endpoint(request, avoid))
    }
}

impl DispatchInner {
    async fn send_to_endpoint(
        self: Arc<Self>,
        mut request: Request<AttemptBody>,
        avoid: Vec<SocketAddr>,
    ) -> Result<Response<ResponseBody>, BoxError> {
        // Returns the stack's error type itself: no future wrapper converting it.
        let mut stale = 0;
        loop {
            // A first attempt may wait (bounded) for an endpoint to become ready; a
            // retry takes what is ready now, so it fails fast when nothing is.
            let picked = if avoid.is_empty() {
                self.balancer.pick(&avoid).await
            } else {
                self.balancer.try_pick(&avoid)
            }
            .map_err(|e| Error::no_endpoint(&self.service, e))?;
            request.body().0.attempt_log().record(picked.addr());
            let conn = match picked.endpoint().checkout().await {
                Ok(conn) => conn,
                Err(e) => {
                    // A connect failure is the endpoint's failure too.
                    self.report(picked.handle(), true);
                    return Err(e.into());
                }
            };
            // The poll's shared reading (the call's telemetry opens a clock
            // scope around each poll): the end's reading below serves the RTT,
            // the outlier detector and the telemetry above.
            let started = clock::now();
            let mut sent = match conn {
                Conn::Http1(mut conn) => match conn.sender.try_send_request(request).await {
                    Ok(response) => {
                        let pool = picked.endpoint().downgrade();
                        return Ok(self.received(picked, started, response, |picked| {
                            Lease::Http1 {
                                conn,
                                pool,
                                _picked: picked,
                            }
                        }));
                    }
                    Err(e) => e,
                },
                Conn::Http2(mut sender) => match sender.try_send_request(request).await {
                    Ok(response) => {
                        return Ok(self.received(picked, started, response, |picked| {
                            Lease::Http2 { _picked: picked }
                        }));
                    }
                    Err(e) => {
                        picked.endpoint().forget_closed_http2();
                        e
                    }
                },
            };
            // The connection closed before our request was written to it: the
            // request comes back untouched and may go out on another connection.
            match sent.take_message() {
                Some(unsent) if stale < STALE_CONNECTION_ATTEMPTS => {
                    stale += 1;
                    request = unsent;
                }
                _ => {
                    self.report(picked.handle(), true);
                    return Err(Error::request(sent.into_error()).into());
                }
            }
        }
    }

    /// A response from `picked`, sent at `started`: its RTT and outcome
    /// recorded, its body holding the lease `lease` makes of the pick.
    fn received(
        &self,
        picked: Picked<EndpointPool>,
        started: Instant,
        response: Response<Incoming>,
        lease: impl FnOnce(Picked<EndpointPool>) -> Lease,
    ) -> Response<ResponseBody> {
        picked.record_rtt(clock::since(started));
        self.report_response(picked.handle(), &response);
        let addr = picked.addr();
        let lease = lease(picked);
        response.map(|body| ResponseBody::incoming(body, Some(lease), addr))
    }

    fn report_response<B>(&self, handle: &EndpointHandle, response: &Response<B>) {
        if let Some(outlier) = &self.outlier {
            let class = outlier
                .classifier
                .response(response.status(), response.headers());
            self.report(handle, class.is_failure());
        }
    }

    fn report(&self, handle: &EndpointHandle, failed: bool) {
        if let Some(outlier) = &self.outlier {
            let known = self.balancer.known_endpoints();
            outlier.detector.record(handle, failed, known);
        }
    }
}

/// HTTP/1.1 sends the path in the request line and the logical name in `Host`;
/// HTTP/2 keeps the absolute URI, whose authority becomes `:authority`. Both
/// carry the deadline's remaining time.
fn to_wire_form<B>(
    request: &mut Request<B>,
    protocol: Protocol,
    host: &HostCache,
) -> Result<(), Error> {
    // Asked before the deadline's headers are written: the map is usually
    // still empty then, and the look-up hashes nothing.
    let caller_set_host =
        matches!(protocol, Protocol::Http1) && request.headers().contains_key(HOST);
    // The time left now: a retry carries less than the first attempt did.
    if let Some(deadline) = Deadline::for_request(request.extensions()) {
        deadline::write_headers(request.headers_mut(), deadline);
    }
    match protocol {
        Protocol::Http1 => {
            // Taken apart rather than cloned: a cloned URI copies its bytes.
            let uri = std::mem::take(request.uri_mut()).into_parts();
            let authority = uri
                .authority
                .ok_or_else(|| Error::invalid_uri("the URI has no authority"))?;
            if !caller_set_host {
                request.headers_mut().insert(HOST, host.value(&authority)?);
            }
            let path = uri
                .path_and_query
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(path);
        }
        Protocol::Http2 | Protocol::Grpc => {
            if request.uri().authority().is_none() {
                return Err(Error::invalid_uri("the URI has no authority"));
            }
            if request.uri().scheme().is_none() {
                return Err(Error::invalid_uri("the URI has no scheme"));
            }
        }
    }
    Ok(())
}

/// The `Host` value of the authority a service's requests name, made once: a
/// client sends one service's requests to the same authority (its logical
/// name), so the value is validated and copied once, then shared.
#[derive(Default)]
struct HostCache(OnceLock<(Authority, HeaderValue)>);

impl HostCache {
    fn value(&self, authority: &Authority) -> Result<HeaderValue, Error> {
        if let Some((cached, value)) = self.0.get() {
            // Byte-equal first (the usual case: the same name, spelt the same
            // way); `Authority`'s own comparison ignores ASCII case, byte by byte.
            if cached.as_str() == authority.as_str() || cached == authority {
                return Ok(value.clone());
            }
        }
        // Shared bytes, so each later clone is a reference count.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(
            authority.as_str().as_bytes(),
        ))
        .map_err(|e| Error::invalid_uri(e.to_string()))?;
        // The first authority seen is the one kept.
        let _ = self.0.set((authority.clone(), value.clone()));
        Ok(value)
    }
}

/// What a response body holds until it has been read to its end (or dropped):
/// the endpoint's in-flight count, and for HTTP/1.1 the connection, which a
/// fully read response frees for the next request. An enum, not a boxed trait
/// object, so a response costs no allocation for it.
pub(crate) enum Lease {
    Http1 {
        conn: Http1Conn,
        pool: Weak<PoolInner>,
        _picked: Picked<EndpointPool>,
    },
    Http2 {
        _picked: Picked<EndpointPool>,
    },
}

impl Lease {
    /// `complete` is true when the body was read to its end, so the connection
    /// may carry another request.
    pub(crate) fn release(self, complete: bool) {
        if let (true, Lease::Http1 { conn, pool, .. }) = (complete, self) {
            give_back(&pool, conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_core::deadline::TIMEOUT_HEADER;

    use super::*;

    fn request_with_deadline(host: Option<&str>) -> Request<()> {
        let mut request = Request::get("http://user-api/users").body(()).unwrap();
        if let Some(host) = host {
            request
                .headers_mut()
                .insert(HOST, HeaderValue::from_str(host).unwrap());
        }
        request
            .extensions_mut()
            .insert(Deadline::after(Duration::from_secs(5)));
        request
    }

    #[test]
    fn http1_wire_form_names_the_service_in_host_unless_the_caller_did() {
        let cache = HostCache::default();
        let mut request = request_with_deadline(None);
        to_wire_form(&mut request, Protocol::Http1, &cache).unwrap();
        assert_eq!(request.headers()[HOST], "user-api");
        assert_eq!(request.uri(), "/users");
        assert!(request.headers().contains_key(TIMEOUT_HEADER));

        let mut request = request_with_deadline(Some("api.example"));
        to_wire_form(&mut request, Protocol::Http1, &cache).unwrap();
        assert_eq!(
            request.headers()[HOST],
            "api.example",
            "the caller's Host is kept"
        );
        assert_eq!(request.headers().get_all(HOST).iter().count(), 1);
        assert!(request.headers().contains_key(TIMEOUT_HEADER));
    }

    #[test]
    fn http2_wire_form_adds_no_host() {
        let mut request = request_with_deadline(None);
        to_wire_form(&mut request, Protocol::Http2, &HostCache::default()).unwrap();
        assert!(!request.headers().contains_key(HOST));
        assert_eq!(request.uri(), "http://user-api/users");
        assert!(request.headers().contains_key(TIMEOUT_HEADER));
    }
}
