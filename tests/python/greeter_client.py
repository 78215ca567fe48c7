"""A Google grpcio client calling our tonic greeter over mTLS, for the interop tests.

Usage: greeter_client.py HOST:PORT CERT KEY BUNDLE SERVER_NAME
Makes a fixed set of calls and prints one JSON object describing what came back.
"""

import json
import sys

import greeter_pb

pb, pb_grpc = greeter_pb.load()
import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402


def outcome(call):
    try:
        reply, rpc = call()
        return {"code": "OK", "message": reply.message, "peer": reply.peer,
                "timeout_ms": reply.timeout_ms,
                "trailers": dict(rpc.trailing_metadata() or ())}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details(),
                "trailers": dict(e.trailing_metadata() or ())}


def main():
    target, cert, key, bundle, name = sys.argv[1:6]
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(bundle, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read())
    channel = grpc.secure_channel(target, creds,
                                  options=(("grpc.ssl_target_name_override", name),))
    stub = pb_grpc.GreeterStub(channel)
    result = {}
    result["unary"] = outcome(lambda: stub.SayHello.with_call(
        pb.HelloRequest(name="py"), timeout=10))
    result["failing"] = outcome(lambda: stub.SayHello.with_call(
        pb.HelloRequest(name="py", fail_with=9), timeout=10))
    result["deadline"] = outcome(lambda: stub.SayHello.with_call(
        pb.HelloRequest(name="slow", delay_ms=5000), timeout=0.3))
    try:
        replies = [r.message for r in stub.SayHelloStream(
            pb.HelloRequest(name="py", count=3), timeout=10)]
        result["stream"] = {"code": "OK", "messages": replies}
    except grpc.RpcError as e:
        result["stream"] = {"code": e.code().name, "details": e.details()}
    try:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10)
        result["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
    except grpc.RpcError as e:
        result["health"] = e.code().name
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
