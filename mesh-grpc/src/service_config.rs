//! gRPC service config JSON (gRFC A2 / A6). The parser lives in
//! [`mesh_core::route::grpc`], so start-up configuration
//! (`MESH_SERVICE_<NAME>_GRPC_SERVICE_CONFIG`) can map a document onto the
//! mesh's routes, retry budget and balancer; it is re-exported here for tonic
//! users, who look for it next to [`MeshChannel`](crate::MeshChannel).

pub use mesh_core::route::grpc::{
    GrpcHedgingPolicy, GrpcRetryPolicy, GrpcServiceConfig, MethodConfig, RetryThrottling,
    ServiceConfigError,
};
