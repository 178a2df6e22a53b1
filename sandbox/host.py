"""A minimal local stand-in for the Functions host, for the sandbox (and the tests' way of calling functions).

``invoke`` calls a registered HTTP function as Microsoft documents for unit tests (a ``func.HttpRequest`` to its
user function), handing it an ``Out`` for each output binding (e.g. a queue) and returning what was set there.
``LocalQueues`` plays the storage queues: messages put on a queue are handed to the queue-triggered functions of
that queue, again with their outputs captured, and re-delivered when the function raises (like the host, up to
five times). ``LocalHost`` serves HTTP on 127.0.0.1 for ``scripts/sandbox.sh --serve``. It is no replacement for
Core Tools (no keys, no timers): with Core Tools installed, use ``func start``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import azure.functions as func

log = logging.getLogger(__name__)
MAX_DEQUEUE_COUNT = 5

_FUNCTIONS: dict | None = None


def registered_functions() -> dict:
    """name -> Function of the app. Cached: ``FunctionApp.get_functions()`` refuses to run twice on one app
    (it re-validates names against those it recorded the first time)."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        import function_app

        _FUNCTIONS = {f.get_function_name(): f for f in function_app.app.get_functions()}
    return _FUNCTIONS


def bindings(fn) -> list[dict]:
    return [json.loads(raw) for raw in fn.get_raw_bindings()]


def http_binding(fn) -> dict:
    for binding in bindings(fn):
        if binding["type"] == "httpTrigger":
            return binding
    raise ValueError(f"{fn.get_function_name()} has no HTTP trigger")


class Capture:
    """An ``Out`` binding: remembers what the function set."""

    def __init__(self) -> None:
        self.value: Any = None

    def set(self, value: Any) -> None:
        self.value = value

    def get(self) -> Any:
        return self.value


def _outputs(fn) -> dict[str, tuple[dict, Capture]]:
    """Output bindings other than the HTTP response: parameter name -> (binding, capture)."""
    return {b["name"]: (b, Capture()) for b in bindings(fn)
            if b.get("direction") == "OUT" and b["name"] != "$return" and b["type"] != "http"}


def _queued(outputs: dict[str, tuple[dict, Capture]]) -> list[tuple[str, str]]:
    """(queue name, message) of everything the function put on queues."""
    out = []
    for binding, capture in outputs.values():
        if binding["type"] == "queue" and capture.value is not None:
            values = capture.value if isinstance(capture.value, list) else [capture.value]
            out.extend((binding["queueName"], str(v)) for v in values)
    return out


async def invoke(name: str, method: str = "GET", *, body=None, raw: bytes | None = None,
                 route: dict | None = None, params: dict | None = None, headers: dict | None = None,
                 queued: list | None = None) -> func.HttpResponse:
    """Call the registered HTTP function ``name``; what it puts on queues is appended to ``queued`` as
    ``(queue name, message)`` pairs."""
    fn = registered_functions()[name]
    binding = http_binding(fn)
    if method not in binding["methods"]:
        raise ValueError(f"{name} does not accept {method}")
    path = binding["route"]
    for k, v in (route or {}).items():
        path = path.replace("{" + k + "}", v)
    url = f"http://localhost:7071/api/{path}" + (f"?{urlencode(params)}" if params else "")
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    req = func.HttpRequest(method, url, body=data, headers=headers or {"Content-Type": "application/json"},
                           params=params or {}, route_params=route or {})
    outputs = _outputs(fn)
    resp = await fn.get_user_function()(req, **{k: c for k, (_, c) in outputs.items()})
    if queued is not None:
        queued.extend(_queued(outputs))
    return resp


class LocalQueues:
    """In-process storage queues: ``put`` a message, ``drain`` runs the queue-triggered functions until every
    queue is empty (messages their runs enqueue are processed too)."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, str, int]] = []
        self.processed = 0

    def put(self, items: list[tuple[str, str]]) -> None:
        self.pending.extend((q, m, 0) for q, m in items)

    def _trigger(self, queue: str):
        for fn in registered_functions().values():
            for b in bindings(fn):
                if b["type"] == "queueTrigger" and b["queueName"] == queue:
                    return fn, b["name"]
        raise LookupError(f"no function listens on queue {queue!r}")

    async def drain(self) -> int:
        handled = 0
        while self.pending:
            queue, message, dequeued = self.pending.pop(0)
            fn, arg = self._trigger(queue)
            outputs = _outputs(fn)
            msg = func.QueueMessage(id=uuid.uuid4().hex, body=message.encode())
            try:
                await fn.get_user_function()(**{arg: msg}, **{k: c for k, (_, c) in outputs.items()})
            except Exception:  # noqa: BLE001 - the host re-delivers; so do we
                log.exception("queue %s: %s failed (delivery %d)", queue, fn.get_function_name(), dequeued + 1)
                if dequeued + 1 < MAX_DEQUEUE_COUNT:
                    self.pending.append((queue, message, dequeued + 1))
                continue
            handled += 1
            self.put(_queued(outputs))
        self.processed += handled
        return handled


class LocalHost:
    """Serves the HTTP functions on 127.0.0.1 and runs what they queue, on one event loop thread."""

    def __init__(self, functions, port: int = 7071):
        self.routes = []
        for fn in functions:
            for b in bindings(fn):
                if b["type"] == "httpTrigger":
                    pattern = re.sub(r"\{(\w+)(?::[^}]*)?\}", r"(?P<\1>[^/]+)", b["route"])
                    self.routes.append((re.compile(f"^/api/{pattern}$"), set(b["methods"]), fn))
        self.queues = LocalQueues()
        self._draining = 0
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="app-loop").start()
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, payload = host.dispatch(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]

    async def _call(self, fn, method: str, target: str, headers: dict, body: bytes, route: dict):
        parts = urlsplit(target)
        req = func.HttpRequest(method, f"http://127.0.0.1:{self.port}{target}", headers=headers, body=body,
                               params=dict(parse_qsl(parts.query)), route_params=route)
        outputs = _outputs(fn)
        resp = await fn.get_user_function()(req, **{k: c for k, (_, c) in outputs.items()})
        self.queues.put(_queued(outputs))
        asyncio.get_running_loop().create_task(self._drain())
        return resp

    async def _drain(self) -> None:
        self._draining += 1
        try:
            await self.queues.drain()
        finally:
            self._draining -= 1

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued message was handled (or ``timeout`` seconds passed)."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.queues.pending and not self._draining:
                return True
            time.sleep(0.02)
        return False

    def dispatch(self, method: str, target: str, headers: dict, body: bytes):
        path = urlsplit(target).path
        allowed = False
        for pattern, methods, fn in self.routes:
            m = pattern.match(path)
            if not m:
                continue
            allowed = True
            if method not in methods:
                continue
            resp = asyncio.run_coroutine_threadsafe(
                self._call(fn, method, target, headers, body, m.groupdict()), self.loop).result()
            out_headers = dict(resp.headers)
            out_headers.setdefault("Content-Type", resp.mimetype or "application/json")
            return resp.status_code, out_headers, resp.get_body()
        status = 405 if allowed else 404
        return status, {"Content-Type": "application/json"}, json.dumps(
            {"error": {"code": "NotFound" if status == 404 else "MethodNotAllowed",
                       "message": f"No function for {method} {path}."}}).encode()

    def serve_forever(self):
        self.server.serve_forever()
