#!/bin/sh
# Regenerates tests/src/proto/*.rs from tests/proto/*.proto (checked in: a bare
# machine has no protoc). Needs Python grpcio-tools (it ships protoc) and cargo.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
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
fn main() {
    let a: Vec<String> = std::env::args().collect();
    tonic_prost_build::configure()
        .build_transport(false)
        .out_dir(&a[1])
        .compile_protos(&[&a[2]], &[&a[3]])
        .unwrap();
}
RS
printf '#!/bin/sh\nexec python3 -m grpc_tools.protoc "$@"\n' > "$work/protoc"
chmod +x "$work/protoc"
(cd "$work" && cargo build -q)
PROTOC="$work/protoc" "$work/target/debug/grpc-gen" "$here/../src/proto" "$here/greeter.proto" "$here"
