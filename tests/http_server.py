"""A real HTTP server for tests: serves a folder on localhost with Range support, counting requests.

Not a test module. ``serve_directory(path)`` is a context manager yielding ``(base_url, log)``;
``log`` records every request (method, path, Range header, status) so tests can assert how many
requests an operation costs. Ranges: ``bytes=a-b``, ``bytes=a-`` and suffix ranges ``bytes=-N``
are answered with 206 and the bytes asked for; unsatisfiable ranges with 416.

    with serve_directory(store_dir) as (url, log):
        store = PatchStore(url)
        log.reset()
        store.manifest
        assert log.count <= 2
"""

from __future__ import annotations

import os
import re
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class RequestLog:
    """Requests a server answered: ``(method, path, range header or None, status)``, thread-safe."""

    requests: list[tuple[str, str, str | None, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, method: str, path: str, range_header: str | None, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, range_header, status))

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def paths(self) -> list[str]:
        with self._lock:
            return [r[1] for r in self.requests]

    def ranged(self) -> list[tuple[str, str | None]]:
        with self._lock:
            return [(r[1], r[2]) for r in self.requests if r[2]]


class RangeRequestHandler(SimpleHTTPRequestHandler):
    """SimpleHTTPRequestHandler plus single-range GET (206) and request logging."""

    log: RequestLog  # set by serve_directory through a subclass
    honour_ranges = True  # False: answer every GET with the whole file (200), as some servers do
    fail_first = 0  # answer the first N GETs of every path with 503 (a transient failure to retry)
    failures: dict  # path -> 503s sent so far
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

    def setup(self):
        super().setup()
        # the handler writes headers and body separately: without TCP_NODELAY, Nagle's algorithm
        # and delayed ACKs stall every response by ~40 ms, which no production server does
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format, *args):  # quiet
        pass

    def send_response(self, code, message=None):
        # recorded before any byte of the response is sent, so a client never sees its answer
        # before the log does
        self.log.add(self.command, self.path, self.headers.get("Range"), int(code))
        super().send_response(code, message)

    def do_GET(self):
        if self.fail_first:
            with self.log._lock:
                sent = self.failures.get(self.path, 0)
                self.failures[self.path] = sent + 1
            if sent < self.fail_first:
                self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        header = self.headers.get("Range")
        path = self.translate_path(self.path)
        if not header or not self.honour_ranges or os.path.isdir(path) or not os.path.isfile(path):
            return super().do_GET()
        self._send_range(path, header)

    def _send_range(self, path: str, header: str) -> None:
        size = os.path.getsize(path)
        m = _RANGE.match(header.strip())
        if not m or (m.group(1) == "" and m.group(2) == ""):
            self.send_error(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "unsupported range")
            return
        first, last = m.group(1), m.group(2)
        if first == "":  # suffix: the last N bytes
            n = int(last)
            start, stop = max(size - n, 0), size
        else:
            start = int(first)
            stop = min(int(last) + 1, size) if last else size
        if start >= size or stop <= start:
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(stop - start)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


@contextmanager
def serve_directory(path: str | Path, ranges: bool = True, fail_first: int = 0, tls: tuple[str, str] | None = None):
    """Serve ``path`` on 127.0.0.1 (a free port) in a background thread; yield ``(base_url, log)``.
    ``ranges=False`` makes a server that ignores Range headers; ``fail_first=N`` one that answers the first
    N GETs of every path with 503; ``tls=(certfile, keyfile)`` one that speaks HTTPS.

    ``base_url`` has no trailing slash: ``f"{base_url}/zarr.json"`` is the folder's zarr.json.
    """
    log = RequestLog()
    handler_cls = type("Handler", (RangeRequestHandler,), {"log": log, "honour_ranges": ranges,
                                                            "fail_first": fail_first, "failures": {}})
    server = _Server(("127.0.0.1", 0), partial(handler_cls, directory=str(path)))
    if tls is not None:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="test-http-server", daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
