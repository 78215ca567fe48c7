"""A Google grpcio greeter server with grpc.health.v1, for the health-check tests.

Usage: health_server.py SERVICE
Binds 127.0.0.1 on a free port, prints {"port": N} on one line, and reports
SERVICE as SERVING. Then reads commands from stdin, one per line, answering each
with one JSON line: `serving` / `not_serving` set SERVICE's health status, `count`
reports the SayHello calls served so far. Exits when stdin closes (so it never
outlives the test that started it).
"""

import json
import sys
import threading
from concurrent import futures

import greeter_pb

pb, pb_grpc = greeter_pb.load()
import grpc  # noqa: E402
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # noqa: E402


class Greeter(pb_grpc.GreeterServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.calls = 0

    def SayHello(self, request, context):
        with self.lock:
            self.calls += 1
            n = self.calls
        return pb.HelloReply(message=f"hello {request.name}", calls=n)


def main():
    service = sys.argv[1]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    greeter = Greeter()
    pb_grpc.add_GreeterServicer_to_server(greeter, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    statuses = {
        "serving": health_pb2.HealthCheckResponse.SERVING,
        "not_serving": health_pb2.HealthCheckResponse.NOT_SERVING,
    }
    for line in sys.stdin:
        command = line.strip()
        if command in statuses:
            health_servicer.set(service, statuses[command])
            print(json.dumps({"status": command}), flush=True)
        elif command == "count":
            with greeter.lock:
                print(json.dumps({"calls": greeter.calls}), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
    server.stop(0)


if __name__ == "__main__":
    main()
