"""A Google grpcio greeter server for the interop tests.

Usage: greeter_server.py [--tls CERT KEY BUNDLE]
Binds 127.0.0.1 on a free port, prints {"port": N} on one line, and serves until
stdin closes (so it never outlives the test that started it).
"""

import collections
import json
import sys
import threading
import time
from concurrent import futures

import greeter_pb

pb, pb_grpc = greeter_pb.load()
import grpc  # noqa: E402


class Greeter(pb_grpc.GreeterServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = collections.Counter()

    def _enter(self, request, context, fail_now=True):
        with self.lock:
            self.calls[request.name] += 1
            n = self.calls[request.name]
        remaining = context.time_remaining()
        timeout_ms = 0 if remaining is None or remaining > 1e9 else int(remaining * 1000)
        context.set_trailing_metadata((("x-calls", str(n)),))
        if request.delay_ms:
            time.sleep(request.delay_ms / 1000)
        if fail_now:
            self._maybe_fail(request, context, n)
        peer = ""
        auth = context.auth_context()
        for uri in auth.get("x509_subject_alternative_name", []):
            if uri.startswith(b"spiffe://"):
                peer = uri.decode()
        return n, timeout_ms, peer

    def _maybe_fail(self, request, context, n):
        if request.fail_with and (request.fail_times == 0 or n <= request.fail_times):
            code = next(c for c in grpc.StatusCode if c.value[0] == request.fail_with)
            if request.pushback_ms:
                context.set_trailing_metadata((("x-calls", str(n)),
                                               ("grpc-retry-pushback-ms", request.pushback_ms)))
            context.abort(code, f"failing {request.name} call {n} on purpose")

    def SayHello(self, request, context):
        n, timeout_ms, peer = self._enter(request, context)
        return pb.HelloReply(message=f"hello {request.name}", peer=peer,
                             timeout_ms=timeout_ms, calls=n)

    def SayHelloStream(self, request, context):
        # A streaming call fails after its replies: with at least one reply the
        # response headers went out first, so the call had committed.
        n, timeout_ms, peer = self._enter(request, context, fail_now=False)
        for i in range(request.count):
            yield pb.HelloReply(message=f"hello {request.name} {i}", peer=peer,
                                timeout_ms=timeout_ms, calls=n)
        self._maybe_fail(request, context, n)


def main():
    args = sys.argv[1:]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_GreeterServicer_to_server(Greeter(), server)
    if args[:1] == ["--tls"]:
        cert, key, bundle = (open(p, "rb").read() for p in args[1:4])
        creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=bundle,
                                            require_client_auth=True)
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    sys.stdin.read()
    server.stop(0)


if __name__ == "__main__":
    main()
