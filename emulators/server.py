"""A small, real HTTP/1.1 server on loopback that the BC and Dataverse emulators build on.

What lives here is what both services share: bearer-token check, latency, injected faults, rate limits
(requests per sliding window and concurrent requests) and counters of HTTP round trips and API operations.
Each emulator subclasses ``EmulatorServer`` and implements ``handle()`` plus the service's own error bodies.

Only for tests and the sandbox; it is never deployed (see ``.funcignore``).
"""
from __future__ import annotations

import collections
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import unquote, unquote_plus, urlsplit

DEFAULT_TOKEN = "local-dev-token"


class CaseInsensitiveDict(dict):
    """Header map; keys stored lower-case."""

    def __init__(self, items=()):
        super().__init__()
        for k, v in (items.items() if isinstance(items, dict) else items):
            self[k] = v

    def __setitem__(self, key, value):
        super().__setitem__(key.lower(), value)

    def __getitem__(self, key):
        return super().__getitem__(key.lower())

    def get(self, key, default=None):
        return super().get(key.lower(), default)

    def __contains__(self, key):
        return super().__contains__(key.lower())


@dataclass
class Request:
    method: str
    target: str
    """The request target as sent (path and query, still percent-encoded)."""
    headers: CaseInsensitiveDict
    body: bytes = b""

    @property
    def path(self) -> str:
        """The path, percent-decoded once."""
        return unquote(urlsplit(self.target).path)

    @property
    def raw_path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        """Query parameters, each decoded exactly once; a raw ``+`` is a space (apis.md Part D: encode ``+`` as
        ``%2B``), which is also how httpx encodes spaces."""
        raw = urlsplit(self.target).query
        out: dict[str, str] = {}
        for part in raw.split("&") if raw else []:
            name, _, value = part.partition("=")
            out[unquote_plus(name)] = unquote_plus(value)
        return out

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, obj: Any, headers: dict[str, str] | None = None,
             content_type: str = "application/json; odata.metadata=minimal") -> "Response":
        h = {"Content-Type": content_type, "OData-Version": "4.0"}
        h.update(headers or {})
        return cls(status, json.dumps(obj, separators=(",", ":")).encode("utf-8"), h)

    @classmethod
    def empty(cls, status: int = 204, headers: dict[str, str] | None = None) -> "Response":
        h = {"OData-Version": "4.0"}
        h.update(headers or {})
        return cls(status, b"", h)


class DropConnection(Exception):
    """Raised by a handler (or a fault) to close the connection without any response."""


@dataclass
class Fault:
    """One injected fault. ``times`` counts down to zero; ``match`` picks the requests it applies to.

    kinds:
      * ``status``: answer ``status`` (with ``Retry-After: retry_after`` when set) without touching data;
      * ``drop``: close the connection before the request is processed (nothing happened);
      * ``drop_after``: process the request, then close the connection without answering (it happened,
        but the client can't know) - the case that must never turn a POST into a duplicate;
      * ``latency``: add ``delay`` seconds before processing.
    """

    kind: str
    times: int = 1
    status: int = 503
    retry_after: float | None = None
    body: Any = None
    delay: float = 0.0
    match: Callable[[Request], bool] | None = None

    def applies(self, req: Request) -> bool:
        return self.times > 0 and (self.match is None or self.match(req))


@dataclass
class RateLimit:
    """The service's protection limits, scaled down for tests.

    ``max_requests`` per ``window_seconds`` (sliding; every API operation counts, batch parts included);
    ``max_concurrent`` requests processed at once. ``queue_concurrent`` (BC) makes extra concurrent requests
    wait for a slot, up to ``max_queued`` waiting, instead of being refused at once (Dataverse).
    """

    max_requests: int | None = None
    window_seconds: float = 300.0
    max_concurrent: int | None = None
    queue_concurrent: bool = False
    max_queued: int = 95


@dataclass
class Stats:
    requests: int = 0
    """HTTP round trips that reached the server (one ``$batch`` is one)."""
    operations: int = 0
    """API operations as the services count them (each part of a ``$batch`` counts)."""
    throttled: int = 0
    by_method: collections.Counter = field(default_factory=collections.Counter)
    writes: int = 0
    """Operations that changed data (create, update, delete), batch parts included."""

    def reset(self) -> None:
        self.requests = self.operations = self.throttled = self.writes = 0
        self.by_method.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EmulatorHTTP/1.0"

    def log_message(self, format, *args):  # noqa: A002 - keep test output clean
        pass

    def _serve(self):
        emulator: EmulatorServer = self.server.emulator  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req = Request(self.command, self.path, CaseInsensitiveDict(self.headers.items()), body)
        try:
            resp = emulator._dispatch(req)
        except DropConnection:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self.send_response(resp.status)
        for k, v in resp.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(resp.body)))
        self.end_headers()
        if resp.body and self.command != "HEAD":
            self.wfile.write(resp.body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


class EmulatorServer:
    """Base of both emulators: a threaded HTTP server bound to 127.0.0.1 on a free port."""

    service = "emulator"

    def __init__(self, *, token: str = DEFAULT_TOKEN, latency: float = 0.0,
                 rate_limit: RateLimit | None = None, host: str = "127.0.0.1", port: int = 0,
                 clock: Callable[[], datetime] | None = None):
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("emulators bind to loopback only")
        self.token = token
        self.latency = latency
        self.rate_limit = rate_limit or RateLimit()
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self.stats = Stats()
        self.lock = threading.RLock()
        """Guards the emulated data; handlers hold it while they read or write."""
        self._faults: list[Fault] = []
        self._fault_lock = threading.Lock()
        self._window: collections.deque[float] = collections.deque()
        self._window_lock = threading.Lock()
        self._in_flight = 0
        self._queued = 0
        self._cond = threading.Condition()
        self._host, self._port = host, port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> "EmulatorServer":
        self._server = _Server((self._host, self._port), _Handler)
        self._server.emulator = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{self.service}-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``"""
        assert self._server, "emulator not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def now(self) -> datetime:
        return self.clock()

    # -- faults -----------------------------------------------------------------------------------------
    def inject(self, kind: str = "status", **kwargs) -> Fault:
        """Add a fault; see ``Fault``. Returns it so a test can read ``times`` afterwards."""
        fault = Fault(kind=kind, **kwargs)
        with self._fault_lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._fault_lock:
            self._faults.clear()

    def _take_fault(self, req: Request) -> Fault | None:
        with self._fault_lock:
            for fault in self._faults:
                if fault.applies(req):
                    fault.times -= 1
                    return fault
        return None

    # -- rate limits ------------------------------------------------------------------------------------
    def admit_operations(self, n: int) -> bool:
        """Charge ``n`` operations to the sliding window. False when that would exceed the limit."""
        rl = self.rate_limit
        with self._window_lock:
            self.stats.operations += n
            if rl.max_requests is None:
                return True
            now = time.monotonic()
            while self._window and self._window[0] <= now - rl.window_seconds:
                self._window.popleft()
            if len(self._window) + n > rl.max_requests:
                return False
            self._window.extend([now] * n)
            return True

    def window_retry_after(self) -> float:
        """Seconds until the sliding window has room again (what ``Retry-After`` should say)."""
        with self._window_lock:
            if not self._window:
                return 0.0
            return max(0.0, self._window[0] + self.rate_limit.window_seconds - time.monotonic())

    def _enter(self) -> bool:
        rl = self.rate_limit
        with self._cond:
            if rl.max_concurrent is None:
                self._in_flight += 1
                return True
            if self._in_flight < rl.max_concurrent:
                self._in_flight += 1
                return True
            if not rl.queue_concurrent or self._queued >= rl.max_queued:
                return False
            self._queued += 1
            while self._in_flight >= rl.max_concurrent:
                self._cond.wait()
            self._queued -= 1
            self._in_flight += 1
            return True

    def _leave(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify()

    # -- dispatch ---------------------------------------------------------------------------------------
    def _dispatch(self, req: Request) -> Response:
        with self._window_lock:
            self.stats.requests += 1
            self.stats.by_method[req.method] += 1
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            return self.unauthorized(req)
        fault = self._take_fault(req)
        if fault and fault.kind == "drop":
            raise DropConnection()
        if fault and fault.kind == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = _fmt_seconds(fault.retry_after)
            if fault.body is not None:
                return Response.json(fault.status, fault.body, headers)
            return self.fault_response(fault.status, headers)
        if not self._enter():
            with self._window_lock:
                self.stats.throttled += 1
            return self.throttled(req, reason="concurrency", retry_after=1.0)
        try:
            delay = self.latency + (fault.delay if fault and fault.kind == "latency" else 0.0)
            if delay:
                time.sleep(delay)
            if not self.admit_operations(1):
                with self._window_lock:
                    self.stats.throttled += 1
                return self.throttled(req, reason="requests", retry_after=max(self.window_retry_after(), 0.05))
            try:
                resp = self.handle(req)
            except DropConnection:
                raise
            except Exception as exc:  # an emulator bug must show as a 500, like a real service fault
                resp = self.fault_response(500, {}, message=f"emulator error: {exc!r}")
            if fault and fault.kind == "drop_after":
                raise DropConnection()
            return resp
        finally:
            self._leave()

    def count_write(self, n: int = 1) -> None:
        with self._window_lock:
            self.stats.writes += n

    # -- to implement -----------------------------------------------------------------------------------
    def handle(self, req: Request) -> Response:  # pragma: no cover - abstract
        raise NotImplementedError

    def unauthorized(self, req: Request) -> Response:  # pragma: no cover - abstract
        raise NotImplementedError

    def throttled(self, req: Request, *, reason: str, retry_after: float) -> Response:  # pragma: no cover
        raise NotImplementedError

    def fault_response(self, status: int, headers: dict[str, str], message: str | None = None) -> Response:
        return Response.json(status, {"error": {"code": str(status), "message": message or "Injected fault."}},
                             headers)


def _fmt_seconds(value: float) -> str:
    """Retry-After is whole seconds on the wire for real services; tests use fractions to stay fast."""
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"
