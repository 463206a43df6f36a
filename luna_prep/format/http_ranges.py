"""Batches of HTTP(S) reads through libcurl (pycurl): a loader's remote path.

A training batch over HTTP is one ranged GET per patch. fsspec's client (aiohttp) spent ~0.4 ms of CPU
on each; libcurl's multi interface runs the whole batch concurrently on reused keep-alive connections
for ~0.17 ms each, so a loader worker delivers about twice the patches. Transient failures (connection
errors, timeouts, 408/425/429/500/502/503/504) are retried with exponential backoff, as an hours-long
run from a remote store needs; a missing file is a ``FileNotFoundError``, other statuses an
:class:`HTTPStatusError` and failed transfers a :class:`TransferError`, each naming the URL. Without pycurl
(or with ``LUNA_HTTP_CLIENT=fsspec``) the store reads through fsspec.

libcurl handles do not survive ``fork`` (a DataLoader worker): each process and thread builds its own,
and a forked child leaves its parent's untouched.
"""

from __future__ import annotations

import io
import os
import threading
import time

from luna_prep.errors import LunaError

try:
    import pycurl
except ImportError:  # pragma: no cover - pycurl is a dependency; the fsspec path remains
    pycurl = None

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# curl errors worth another attempt: proxy/host resolution, connecting, HTTP/2 framing, a partial file, a
# timeout, the TLS handshake, an empty reply, sending, receiving, an HTTP/2 stream. Not: a malformed URL,
# a certificate that cannot be verified (60, 77), or anything else a retry cannot change.
TRANSIENT_CURL_ERRORS = frozenset({5, 6, 7, 16, 18, 28, 35, 52, 55, 56, 92})
_CA_ENV = ("CURL_CA_BUNDLE", "SSL_CERT_FILE")  # honoured as the curl command line does


class HTTPStatusError(LunaError, OSError):
    """An HTTP answer that is neither the bytes asked for nor "not found"; ``status`` is its code."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class TransferError(LunaError, OSError):
    """A GET that failed before an answer came (connection refused, host not found, timeout), naming the URL."""


def available() -> bool:
    """True when HTTP(S) stores should read through libcurl."""
    return pycurl is not None and os.environ.get("LUNA_HTTP_CLIENT", "curl").lower() != "fsspec"


def _range_header(start: int | None, stop: int | None) -> str | None:
    """libcurl's RANGE value for bytes [start, stop) (negative ``start``, no ``stop``: the last bytes)."""
    if start is None or (start == 0 and stop is None):
        return None
    if start < 0:
        return f"-{-start}"
    return f"{start}-" if stop is None else f"{start}-{stop - 1}"


class _Transfer:
    """One GET: where, which bytes, what came back, and how many attempts it has had."""

    __slots__ = ("url", "range", "limit", "body", "handle", "attempt")

    def __init__(self, url: str, start: int | None, stop: int | None):
        self.url, self.range, self.attempt, self.handle = url, _range_header(start, stop), 0, None
        # a server that ignores Range answers with the whole file: libcurl stops before its body when the
        # answer is longer than what was asked for (CURLOPT_MAXFILESIZE)
        self.limit = -start if start is not None and start < 0 else (stop - start if stop is not None else 0)
        self.body = io.BytesIO()


class ResponseTooLarge(LunaError, OSError):
    """An answer longer than the byte range asked for: the server ignored the Range header."""


class CurlReader:
    """Concurrent GETs of many URLs (whole or byte ranges), one libcurl multi handle per process and thread."""

    retries = 5  # after the first attempt
    backoff_s = 0.2  # the first retry's wait, doubled each time
    max_connections = 16  # per host, per process
    connect_timeout_s = 30
    stall_timeout_s = 60  # a transfer slower than 1 byte/s for this long fails (and is retried)

    def __init__(self):
        self._state = threading.local()

    def _multi(self):
        """(multi, idle easy handles) of this process and thread, rebuilt in a forked child."""
        state = self._state
        if getattr(state, "pid", None) != os.getpid():
            if getattr(state, "pid", None) is not None:  # forked: the parent's handles share its sockets
                _LEFT_IN_PARENT.append((state.multi, state.idle))  # never cleaned up here
            state.pid, state.multi, state.idle = os.getpid(), pycurl.CurlMulti(), []
            state.multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, self.max_connections)
        return state.multi, state.idle

    def _handle(self, idle: list):
        if idle:
            return idle.pop()
        c = pycurl.Curl()
        c.setopt(pycurl.NOSIGNAL, 1)
        c.setopt(pycurl.FOLLOWLOCATION, 1)
        c.setopt(pycurl.MAXREDIRS, 5)
        c.setopt(pycurl.TCP_NODELAY, 1)
        c.setopt(pycurl.CONNECTTIMEOUT, self.connect_timeout_s)
        c.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        c.setopt(pycurl.LOW_SPEED_TIME, self.stall_timeout_s)
        for name in _CA_ENV:
            if os.environ.get(name):
                c.setopt(pycurl.CAINFO, os.environ[name])
                break
        return c

    def get(self, urls: list[str], starts: list[int | None], stops: list[int | None]) -> list[bytes | Exception]:
        """The body of each GET (bytes [start, stop) of ``url``; ``start`` None: the whole file; negative: the
        last ``-start`` bytes), or its exception; all in flight at once."""
        out: list[bytes | Exception | None] = [None] * len(urls)
        for k, result in self.each(urls, starts, stops):
            out[k] = result
        return out

    def each(self, urls: list[str], starts: list[int | None], stops: list[int | None]):
        """``(position, body or exception)`` of each GET of :meth:`get` as it completes, so that a caller can
        use one answer while the others are still arriving. Close the generator when leaving it early."""
        multi, idle = self._multi()
        transfers = [_Transfer(u, a, b) for u, a, b in zip(urls, starts, stops)]
        running: dict[int, int] = {}  # id(handle) -> position
        waiting: list[tuple[float, int]] = []  # (when, position) of transfers to try again
        try:
            for k in range(len(transfers)):
                self._start(multi, idle, transfers[k], running, k)
            while running or waiting:
                now = time.monotonic()
                for when, k in [w for w in waiting if w[0] <= now]:
                    waiting.remove((when, k))
                    self._start(multi, idle, transfers[k], running, k)
                if not running:
                    time.sleep(max(0.0, min(w[0] for w in waiting) - now))
                    continue
                finished = self._perform(multi)
                for handle, error in finished:
                    k = running.pop(id(handle), None)
                    if k is None:
                        continue
                    t = transfers[k]
                    result, transient = self._result(t, error)
                    multi.remove_handle(handle)
                    idle.append(handle)
                    t.handle = None
                    if transient and t.attempt < self.retries:
                        t.attempt += 1
                        t.body = io.BytesIO()
                        waiting.append((time.monotonic() + self.backoff_s * 2 ** (t.attempt - 1), k))
                    else:
                        yield k, result
                if not finished and running:
                    multi.select(1.0)
        finally:
            for t in transfers:
                if t.handle is not None:
                    multi.remove_handle(t.handle)
                    idle.append(t.handle)
                    t.handle = None

    def _start(self, multi, idle: list, t: _Transfer, running: dict, k: int) -> None:
        c = t.handle = self._handle(idle)
        c.setopt(pycurl.URL, t.url)
        if t.range is None:
            c.unsetopt(pycurl.RANGE)
        else:
            c.setopt(pycurl.RANGE, t.range)
        c.setopt(pycurl.MAXFILESIZE, t.limit)  # 0: no limit
        c.setopt(pycurl.WRITEDATA, t.body)
        multi.add_handle(c)
        running[id(c)] = k

    @staticmethod
    def _perform(multi) -> list[tuple[object, tuple[int, str] | None]]:
        """Drive the transfers; the handles that finished, each with its curl error (None: a complete answer)."""
        ret = pycurl.E_CALL_MULTI_PERFORM
        while ret == pycurl.E_CALL_MULTI_PERFORM:
            ret, _ = multi.perform()
        finished = []
        while True:
            queued, ok, failed = multi.info_read()
            finished += [(c, None) for c in ok] + [(c, (errno, message)) for c, errno, message in failed]
            if not queued:
                return finished

    @staticmethod
    def _result(t: _Transfer, error: tuple[int, str] | None) -> tuple[bytes | Exception, bool]:
        """(bytes or exception, whether another attempt may help) of a finished transfer."""
        status = t.handle.getinfo(pycurl.RESPONSE_CODE)
        too_large = error is not None and error[0] == pycurl.E_FILESIZE_EXCEEDED  # stopped by CURLOPT_MAXFILESIZE
        if too_large and status in (200, 206):
            return ResponseTooLarge(f"{t.url}: the server answered a request for {t.limit:,} bytes with more "
                                    f"(HTTP {status}): it ignores Range requests"), False
        if status in (404, 410):  # whatever the error page's length
            return FileNotFoundError(f"{t.url}: not found (HTTP {status})"), False
        if error is not None and not too_large:
            return TransferError(f"{t.url}: {error[1]} (curl error {error[0]})"), error[0] in TRANSIENT_CURL_ERRORS
        if status in (200, 206) and error is None:
            return t.body.getvalue(), False
        return HTTPStatusError(f"{t.url}: HTTP {status}", status), status in RETRY_STATUSES


_LEFT_IN_PARENT: list = []
_READER: CurlReader | None = None


def reader() -> CurlReader:
    """The process's shared reader (connections are reused across stores)."""
    global _READER
    if _READER is None:
        _READER = CurlReader()
    return _READER
