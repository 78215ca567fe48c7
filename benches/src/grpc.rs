//! The gRPC pair: tonic over its own `Channel` and tonic over `MeshChannel`,
//! calling the same tonic server over h2c (one HTTP/2 connection each, no TLS on
//! either side, so the difference is the mesh's stack alone). The message is the
//! 1 KiB payload as a protobuf `bytes` value (prost's `BytesValue` encoding), so
//! no generated code is needed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tonic::client::GrpcService;
use tonic::transport::server::TcpIncoming;
use tonic_prost::ProstCodec;

use crate::server::{payload, PAYLOAD_BYTES};
use crate::target::{BoxError, CallFuture, Target};

/// The one method the server answers.
pub const METHOD: &str = "/bench.Echo/Echo";

/// Serves `bench.Echo/Echo` (answers the payload) on `listener` until the task
/// is dropped.
pub async fn serve_grpc(listener: TcpListener) {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let _ = tonic::transport::Server::builder()
        .add_service(Echo)
        .serve_with_incoming(incoming)
        .await;
}

#[derive(Debug, Clone, Copy)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "bench.Echo";
}

struct EchoUnary;

impl tonic::server::UnaryService<Bytes> for EchoUnary {
    type Response = Bytes;
    type Future = std::future::Ready<Result<tonic::Response<Bytes>, tonic::Status>>;

    fn call(&mut self, _request: tonic::Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(payload())))
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != METHOD {
                return Ok(tonic::Status::unimplemented("only bench.Echo/Echo").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<Bytes, Bytes>::default());
            Ok(grpc.unary(EchoUnary, request).await)
        })
    }
}

/// A unary call over any tonic transport: `tonic::transport::Channel` or
/// `mesh_grpc::MeshChannel`.
#[derive(Debug, Clone)]
pub struct GrpcTarget<T> {
    grpc: tonic::client::Grpc<T>,
}

impl<T> GrpcTarget<T> {
    /// Calls [`METHOD`] over `channel`.
    pub fn new(channel: T) -> Self {
        GrpcTarget {
            grpc: tonic::client::Grpc::new(channel),
        }
    }
}

impl<T> Target for GrpcTarget<T>
where
    T: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    T::Future: Send,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    fn call(&self) -> CallFuture {
        let mut grpc = self.grpc.clone();
        Box::pin(async move {
            grpc.ready().await.map_err(Into::into)?;
            let response = grpc
                .unary(
                    tonic::Request::new(payload()),
                    PathAndQuery::from_static(METHOD),
                    ProstCodec::<Bytes, Bytes>::default(),
                )
                .await?;
            match response.get_ref().len() {
                PAYLOAD_BYTES => Ok(()),
                n => Err(format!("answer of {n} bytes, expected {PAYLOAD_BYTES}").into()),
            }
        })
    }
}
