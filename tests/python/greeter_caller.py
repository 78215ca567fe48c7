"""A Google grpcio client making the greeter calls a test asks for, over mTLS.

Usage: greeter_caller.py HOST:PORT CERT KEY BUNDLE SERVER_NAME
Reads commands from stdin, one per line: `unary ID NAME` or `stream ID NAME`
starts that call (SayHello, or SayHelloStream with 2 replies) without waiting
for it; when it ends, prints one JSON line {"id", "code", "details",
"trailers"}. So a test can keep one call in flight while it makes others.
Exits when stdin closes, after every call has ended.
"""

import json
import sys
import threading

import greeter_pb

pb, pb_grpc = greeter_pb.load()
import grpc  # noqa: E402

lock = threading.Lock()


def report(call_id, result):
    result["id"] = call_id
    with lock:
        print(json.dumps(result), flush=True)


def run(stub, kind, call_id, name):
    request = pb.HelloRequest(name=name, count=2)
    try:
        if kind == "unary":
            reply, rpc = stub.SayHello.with_call(request, timeout=30)
            messages = [reply.message]
            trailers = rpc.trailing_metadata()
        else:
            replies = stub.SayHelloStream(request, timeout=30)
            messages = [r.message for r in replies]
            trailers = replies.trailing_metadata()
        report(call_id, {"code": "OK", "messages": messages,
                         "trailers": dict(trailers or ())})
    except grpc.RpcError as e:
        report(call_id, {"code": e.code().name, "details": e.details(),
                         "trailers": dict(e.trailing_metadata() or ())})


def main():
    target, cert, key, bundle, name = sys.argv[1:6]
    creds = grpc.ssl_channel_credentials(
        root_certificates=open(bundle, "rb").read(),
        private_key=open(key, "rb").read(),
        certificate_chain=open(cert, "rb").read())
    channel = grpc.secure_channel(target, creds,
                                  options=(("grpc.ssl_target_name_override", name),))
    stub = pb_grpc.GreeterStub(channel)
    calls = []
    for line in sys.stdin:
        kind, call_id, call_name = line.split()
        call = threading.Thread(target=run, args=(stub, kind, call_id, call_name))
        call.start()
        calls.append(call)
    for call in calls:
        call.join()


if __name__ == "__main__":
    main()
