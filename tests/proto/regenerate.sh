#!/bin/sh
# Regenerates tests/src/proto/*.rs from tests/proto/*.proto (checked in: a bare
# machine has no protoc). Needs Python grpcio-tools (it ships protoc and the
# well-known types workload.proto imports) and cargo. Run from anywhere:
#   sh tests/proto/regenerate.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../src/proto"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/out"
cat > "$work/Cargo.toml" <<'TOML'
[package]
name = "grpc-gen"
version = "0.0.0"
edition = "2021"
[workspace]
[dependencies]
tonic-prost-build = "0.14"
TOML
cat > "$work/src/main.rs" <<'RS'
// Usage: grpc-gen OUT_DIR PROTO INCLUDE_DIR client|server-only
fn main() {
    let a: Vec<String> = std::env::args().collect();
    tonic_prost_build::configure()
        .build_transport(false)
        .build_client(a[4] == "client")
        .out_dir(&a[1])
        .compile_protos(&[&a[2]], &[&a[3]])
        .unwrap();
}
RS
includes=$(python3 -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
printf '#!/bin/sh\nexec python3 -m grpc_tools.protoc -I"%s" "$@"\n' "$includes" > "$work/protoc"
chmod +x "$work/protoc"
(cd "$work" && cargo build -q)
gen() { PROTOC="$work/protoc" "$work/target/debug/grpc-gen" "$@"; }

# The greeter of the gRPC interop tests (package mesh.test.greeter).
gen "$out" "$here/greeter.proto" "$here" client
# The Workload API has no package, so prost names its file `_.rs`; the tests
# only serve it (the mesh's client is the `spiffe` crate's).
gen "$work/out" "$here/workload.proto" "$here" server-only
mv "$work/out/_.rs" "$out/spiffe.workload.rs"
