//! Configuration from `MESH_` environment variables (work in progress).
