#!/usr/bin/env python3
"""A small benchmark origin (stdlib only): every object is generated from its URL, with caching headers.

    GET /o/<size>/<delay_ms>/<anything>   -> <size> bytes, after <delay_ms> milliseconds

Responses carry Content-Length, `Cache-Control: public, max-age=86400`, an ETag and Last-Modified, and a
Content-Type from the suffix (.m3u8, .ts, other). HTTP/1.1 keep-alive, one thread per connection.

Every request is appended to the log file given with --log as `<path> <bytes sent>` (flushed at once), so a
benchmark counts what the origin really served (origin requests, origin bytes) without trusting the
cache under test.

Prints `origin listening on 127.0.0.1:<port>` once ready.
"""

import argparse
import hashlib
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_SIZE = 16 * 1024 * 1024
# One shared pattern; bodies are slices of it (no per-request generation cost).
PATTERN = bytes(range(256)) * (MAX_SIZE // 256)
LAST_MODIFIED = "Mon, 01 Jan 2024 00:00:00 GMT"


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and small bodies leave in one segment, and nothing waits on Nagle + delayed ACK (which would
    # add 40 ms to every small response for whichever client ACKs lazily).
    wbufsize = 1 << 16
    disable_nagle_algorithm = True
    server_version = "bench-origin"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def parse_object(self):
        parts = self.path.split("?", 1)[0].split("/")
        # ['', 'o', size, delay, name...]
        if len(parts) < 5 or parts[1] != "o":
            return None
        try:
            size = int(parts[2])
            delay_ms = int(parts[3])
        except ValueError:
            return None
        if not 0 <= size <= MAX_SIZE or not 0 <= delay_ms <= 60_000:
            return None
        return size, delay_ms

    def answer(self, with_body):
        parsed = self.parse_object()
        if parsed is None:
            body = b"expected /o/<size>/<delay_ms>/<name>\n"
            self.send_response(404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if with_body:
                self.wfile.write(body)
            self.server.record(self.path, len(body) if with_body else 0)
            return
        size, delay_ms = parsed
        if delay_ms:
            time.sleep(delay_ms / 1000.0)
        etag = '"' + hashlib.blake2s(self.path.encode(), digest_size=8).hexdigest() + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.send_header("Cache-Control", "public, max-age=86400")
            self.end_headers()
            self.server.record(self.path, 0)
            return
        self.send_response(200)
        if self.path.endswith(".m3u8"):
            content_type = "application/vnd.apple.mpegurl"
        elif self.path.endswith(".ts"):
            content_type = "video/mp2t"
        else:
            content_type = "application/octet-stream"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "public, max-age=86400")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", LAST_MODIFIED)
        self.end_headers()
        if with_body and size:
            self.wfile.write(memoryview(PATTERN)[:size])
        self.server.record(self.path, size if with_body else 0)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.answer(True)

    def do_HEAD(self):  # noqa: N802
        self.answer(False)


class LoggingServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address, log_path):
        super().__init__(address, Origin)
        self.log_lock = threading.Lock()
        self.log_file = open(log_path, "a", buffering=1) if log_path else None

    def record(self, path, sent):
        if self.log_file is None:
            return
        with self.log_lock:
            self.log_file.write(f"{path} {sent}\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", default=None, help="append `<path> <bytes>` per request to this file")
    args = parser.parse_args()
    server = LoggingServer(("127.0.0.1", args.port), args.log)
    host, port = server.server_address[:2]
    print(f"origin listening on {host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
