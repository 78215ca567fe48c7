//! Request and response bodies as the client carries them.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use mesh_core::replay::ReplayBody;

use crate::client::Lease;
use crate::error::BoxError;

/// A request body once the client has taken it: any `http_body::Body` boxed, so
/// one connection type serves every caller's body type.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// The body of one attempt as the endpoint dispatch sends it: the retry layer's
/// copy of the call's body (which also carries the call's attempt log), sent as
/// it is rather than boxed again, so an attempt costs no allocation for its body.
///
/// A type of its own, with a `Body` impl free of generic bounds: hyper's
/// connection futures over `ReplayBody<RequestBody>` directly trip a compiler
/// limitation (higher-ranked lifetimes in the `Send` check of `tokio::spawn`).
#[derive(Debug)]
pub(crate) struct AttemptBody(pub(crate) ReplayBody<RequestBody>);

impl Body for AttemptBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A response body from the mesh. Reading it to the end returns its connection
    /// to the pool; dropping it early closes an HTTP/1.1 connection.
    pub struct ResponseBody {
        #[pin]
        inner: Inner,
        // What to release when the body has been read to its end (or dropped).
        lease: Option<Lease>,
        // The endpoint that answered. Kept here rather than as a `ServedBy`
        // response extension: hyper's responses have no extension map, and
        // making one costs three allocations per call.
        served_by: Option<SocketAddr>,
    }

    impl PinnedDrop for ResponseBody {
        fn drop(this: Pin<&mut Self>) {
            if let Some(lease) = this.project().lease.take() {
                lease.release(false);
            }
        }
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner {
        Incoming { #[pin] body: Incoming },
        Boxed { #[pin] body: UnsyncBoxBody<Bytes, BoxError> },
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

/// An empty body, for responses layers synthesize (injected faults, shed requests).
impl Default for ResponseBody {
    fn default() -> Self {
        ResponseBody::new(http_body_util::Empty::<Bytes>::new())
    }
}

impl ResponseBody {
    pub(crate) fn incoming(body: Incoming, lease: Option<Lease>, served_by: SocketAddr) -> Self {
        let mut body = ResponseBody {
            inner: Inner::Incoming { body },
            lease,
            served_by: Some(served_by),
        };
        body.release_if_ended();
        body
    }

    /// Wraps any body (used by egress and by layers that synthesize responses).
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        ResponseBody {
            inner: Inner::Boxed {
                body: body.map_err(Into::into).boxed_unsync(),
            },
            lease: None,
            served_by: None,
        }
    }

    /// The endpoint that answered, for a response the mesh client received
    /// from one (`None` for responses a layer made up, such as an injected
    /// fault, and for bodies wrapped with [`ResponseBody::new`]).
    ///
    /// This is where the client names the endpoint: responses no longer carry
    /// a [`ServedBy`](mesh_core::extensions::ServedBy) extension (the gRPC
    /// channel still puts one on its responses, which tonic hands to callers).
    pub fn served_by(&self) -> Option<SocketAddr> {
        self.served_by
    }

    fn release_if_ended(&mut self) {
        if self.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.release(true);
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = match this.inner.project() {
            InnerProj::Incoming { body } => body.poll_frame(cx).map_err(Into::into),
            InnerProj::Boxed { body } => body.poll_frame(cx),
        };
        if let Poll::Ready(None) = polled {
            if let Some(lease) = this.lease.take() {
                lease.release(true);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Incoming { body } => body.is_end_stream(),
            Inner::Boxed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Incoming { body } => body.size_hint(),
            Inner::Boxed { body } => body.size_hint(),
        }
    }
}
