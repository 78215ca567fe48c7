//! gRPC glue for the in-process mesh (tonic `MeshChannel` and server); arrives with the gRPC issue.
