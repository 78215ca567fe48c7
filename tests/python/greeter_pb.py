"""Loads the greeter's generated Python modules, compiling tests/proto/greeter.proto
with grpcio-tools' bundled protoc into a temporary folder (nothing is checked in)."""

import importlib
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "proto")


def load():
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.stderr.write(
            "grpcio-tools is missing: run scripts/test.sh (it installs grpcio, "
            "grpcio-health-checking and grpcio-tools)\n")
        sys.exit(3)
    out = tempfile.mkdtemp(prefix="greeter-py-")
    import grpc_tools
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    code = protoc.main([
        "protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}",
        f"--grpc_python_out={out}", os.path.join(PROTO_DIR, "greeter.proto"),
    ])
    if code != 0:
        sys.stderr.write("protoc failed on greeter.proto\n")
        sys.exit(3)
    sys.path.insert(0, out)
    return importlib.import_module("greeter_pb2"), importlib.import_module("greeter_pb2_grpc")
