"""A zero-latency tensor peer for the benchmarks: answers every /pooling request at once with fixed logits, the
way vLLM 0.32 does (base64 float32 JSON, or raw bytes with a `metadata` header when the request asks
`encoding_format: "bytes"`), doing as little work per request as Python allows: the benchmarks measure the
client, and every millisecond spent here is taken from the same two cores. Not a test fixture (the tests'
fake vLLM is tests/fixtures/fake_vllm.py).

    python benchmarks/canned_peer.py --tile 512 --classes 2     # prints "PORT <n>", serves until stdin closes
    python benchmarks/canned_peer.py --latency 0.03             # each answer waits 30 ms: a fast GPU server's time,
                                                                # requests answered in parallel
"""

from __future__ import annotations

import argparse
import base64
import json
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fixtures.fake_vllm import binary_answer  # noqa: E402


class Peer:
    def __init__(self, tile: int, classes: int, latency: float = 0.0) -> None:
        self.latency = latency
        self.lock = threading.Lock()
        self.requests = 0
        self.version = "0.32.0"
        self.model = "fake-model"
        logits = np.zeros((classes, tile, tile), np.float32)
        logits[1 % classes, :, : tile // 2] = 1.0  # something that is not all one class
        self.canned_logits = logits
        self.canned = json.dumps({"id": "pool-canned", "object": "list", "data": [
            {"index": 0, "object": "pooling", "data": base64.b64encode(logits.tobytes()).decode()}],
            "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()

    def server(self) -> socketserver.ThreadingTCPServer:
        """Canned answers with as little work per request as Python allows: the benchmark measures the
        client, and every millisecond spent here is taken from the same two cores."""
        peer = self

        def response(status: str, body: bytes) -> bytes:
            head = (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            return head + body

        pooling = response("200 OK", self.canned or b"")
        # the binary answers, as vLLM sends them: raw tensor, shape and dtype in a header
        binary = {}
        for dtype in ("float32", "float16"):
            reply = binary_answer(self.canned_logits, dtype, "little", True)
            binary[dtype.encode()] = (
                f"HTTP/1.1 200 OK\r\nContent-Type: {reply.content_type}\r\n"
                f"metadata: {reply.headers['metadata']}\r\nContent-Length: {len(reply.body)}\r\n\r\n"
            ).encode() + reply.body
        version = response("200 OK", json.dumps({"version": self.version}).encode())
        models = response("200 OK", json.dumps({"object": "list", "data": [
            {"id": self.model, "object": "model", "root": self.model}]}).encode())
        health = response("200 OK", b"")
        missing = response("404 Not Found", b'{"detail":"Not Found"}')

        class Handler(socketserver.StreamRequestHandler):
            rbufsize = 1 << 16

            def handle(self) -> None:
                buf = bytearray(1 << 22)
                while True:
                    line = self.rfile.readline(65537)
                    if not line:
                        return
                    length = 0
                    while True:
                        h = self.rfile.readline(65537)
                        if h in (b"\r\n", b"\n", b""):
                            break
                        if h[:15].lower() == b"content-length:":
                            length = int(h[15:])
                    if length > len(buf):
                        buf = bytearray(length)
                    view = memoryview(buf)[:length]
                    got = 0
                    while got < length:
                        n = self.rfile.readinto(view[got:])
                        if not n:
                            return
                        got += n
                    method, path = line.split()[:2]
                    path = path.split(b"?")[0]
                    if method == b"POST" and path == b"/pooling":
                        with peer.lock:
                            peer.requests += 1
                        if peer.latency:
                            time.sleep(peer.latency)
                        # the format fields sit before the megabytes of tensors: look at the head only
                        head = bytes(view[:256])
                        if b'"encoding_format":"bytes"' in head:
                            dtype = b"float16" if b'"embed_dtype":"float16"' in head else b"float32"
                            self.wfile.write(binary[dtype])
                        else:
                            self.wfile.write(pooling)
                    elif path == b"/version":
                        self.wfile.write(version)
                    elif path == b"/v1/models":
                        self.wfile.write(models)
                    elif path in (b"/health", b"/ping"):
                        self.wfile.write(health)
                    else:
                        self.wfile.write(missing)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 64

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        return Server(("127.0.0.1", 0), Handler)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds each /pooling answer waits (default 0)")
    args = ap.parse_args(argv)
    server = Peer(args.tile, args.classes, args.latency).server()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        sys.stdin.read()  # runs until the parent closes our stdin
    finally:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
