"""Webhook steps for the Dataverse emulator: it posts ``RemoteExecutionContext`` bodies for its writes, as
Dataverse does for a registered service endpoint step (apis.md B1-B7, Part E (13)).

    reg = dv.register_webhook("http://127.0.0.1:7071/api/webhooks/dataverse?code=<key>",
                              messages=("Create", "Update", "Delete"), entity_sets=("accounts", "contacts"),
                              headers={"X-Webhook-Secret": "s3cret"}, mode="async",
                              filtering_attributes=("name", "telephone1"))
    dv.update("accounts", row_id, {"name": "Contoso"})   # an edit "by a person"
    dv.webhooks.wait_idle()                              # async deliveries are made by a background thread

What is reproduced:

* **Every write fires**, whoever makes it - a person through the direct data API, another API caller, or the app's
  own API user through HTTP (real Dataverse does the same; the app must recognise its own echoes). Create, Update
  (only when a filtering attribute, if any, was sent) and Delete, on the registered tables.
* **Asynchronous** steps (``mode="async"``, the default): the context is captured at the write and delivered after
  it by a background thread, only if the write committed (a rolled-back ``$batch`` changeset sends nothing).
  At-least-once; ``duplicate=True`` delivers every context twice, and ``pause()`` / ``resume(reverse=True)``
  holds deliveries back and releases them out of order. A failed delivery is kept in ``failures`` (Dataverse's
  failed System Job, statuscode 31); the data change stays.
* **Synchronous** steps (``mode="sync"``): called inside the write, before it returns; a non-2xx answer or a
  timeout makes the write fail (``DataverseError`` 400, code 0x80040265 - the plug-in error code; the real
  text of a failed webhook step was not captured) and undoes it.
* **Timeout** 60 s; **exactly one more attempt** on 502, 503 and 504, no other retries; the response body is ignored.
* Bodies and headers from ``dataverse_webhook``: ``x-ms-dynamics-*`` headers, 256 KB rule, the registration's own
  headers (HttpHeader authentication); WebhookKey authentication is the ``?code=`` of the URL.

``LocalFunctionEndpoint`` (bottom) is the receiving end for tests and the sandbox: a loopback HTTP endpoint that
runs an HTTP-triggered function with a queue output and the queue-triggered function that reads the queue, the
way the Functions host does (output written before the answer; a failed message delivered again).

Only for tests and the sandbox; never deployed.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import parse_qsl, urlsplit

from emulators import dataverse_webhook as wh

RETRY_STATUSES = (502, 503, 504)
DEFAULT_TIMEOUT = 60.0
HANDLED = ("Create", "Update", "Delete")

Transport = Callable[[str, dict, bytes, float], int]
"""``(url, headers, body, timeout) -> HTTP status``; raises ``OSError``/``TimeoutError`` when nothing came back."""


def http_transport(url: str, headers: dict, body: bytes, timeout: float) -> int:
    """POST over HTTP (loopback in tests); the body of the answer is ignored, as Dataverse does."""
    import httpx

    with httpx.Client(timeout=timeout, trust_env=False) as client:
        try:
            return client.post(url, content=body, headers=headers).status_code
        except httpx.TimeoutException as exc:
            raise TimeoutError(str(exc)) from None
        except httpx.HTTPError as exc:
            raise OSError(str(exc)) from None


def _mode(value: Any) -> int:
    if value in (0, "sync", "synchronous", "Synchronous"):
        return 0
    if value in (1, "async", "asynchronous", "Asynchronous"):
        return 1
    raise ValueError("mode is 'sync' (0) or 'async' (1)")


@dataclass
class WebhookRegistration:
    """A service endpoint (contract Webhook) with one step per message."""

    id: str
    url: str
    messages: frozenset[str]
    tables: frozenset[str] | None
    """Logical names; None = every table."""
    headers: dict[str, str]
    mode: int
    filtering_attributes: frozenset[str] | None
    pre_image: bool = True
    post_image: bool = False
    timeout: float = DEFAULT_TIMEOUT
    duplicate: bool = False
    retry_delay: float = 0.0
    name: str = "bc-dataverse-sync"
    enabled: bool = True


@dataclass
class Delivery:
    """One context sent (or held, or dropped) for one registration."""

    registration: WebhookRegistration
    message: str
    entity: str
    row_id: str
    context: dict
    headers: dict
    body: bytes
    version: int | None = None
    statuses: list[int | str] = field(default_factory=list)
    """Status of each attempt (``"timeout"`` / ``"error"`` when nothing came back)."""
    ok: bool | None = None
    dropped: bool = False
    """Not sent: its write was rolled back."""
    copy: int = 1

    @property
    def succeeded(self) -> bool:
        return bool(self.ok)


class WebhookStepFailed(Exception):
    pass


class WebhookSender:
    """The emulator's webhook steps. Built by ``DataverseEmulator.register_webhook``; ``written`` is called by the
    emulator for each Create / Update / Delete with its data lock held."""

    def __init__(self, emulator: Any, *, transport: Transport | None = None):
        self.emulator = emulator
        self.transport = transport or http_transport
        self.registrations: list[WebhookRegistration] = []
        self.deliveries: list[Delivery] = []
        """Every delivery made, in the order it was made (async ones when sent)."""
        self.failures: list[Delivery] = []
        """Async deliveries that failed (Dataverse: System Jobs with statuscode 31)."""
        self.dropped: list[Delivery] = []
        """Async contexts never sent: their write was rolled back."""
        self._pending: collections.deque[Delivery] = collections.deque()
        self._held: list[Delivery] = []
        self._paused = False
        self._busy = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- registration --------------------------------------------------------------------------------------------
    def register(self, url: str, *, messages: Iterable[str] = HANDLED, entity_sets: Iterable[str] | None = None,
                 headers: dict[str, str] | None = None, mode: Any = "async",
                 filtering_attributes: Iterable[str] | None = None, pre_image: bool = True,
                 post_image: bool = False, timeout: float = DEFAULT_TIMEOUT, duplicate: bool = False,
                 retry_delay: float = 0.0, name: str = "bc-dataverse-sync") -> WebhookRegistration:
        """Register a webhook and its steps. ``entity_sets``: entity set or logical names (None = all tables);
        ``filtering_attributes``: column names, Update fires only when one of them was sent; ``pre_image``: the
        row before an Update/Delete as PreEntityImages ``PreImage``; ``post_image``: the whole row after a
        Create/Update as ``PostImage``; ``duplicate``: deliver every async context twice (at-least-once)."""
        names = {m.capitalize() for m in messages}
        unknown = names - set(HANDLED)
        if unknown:
            raise ValueError(f"messages are Create, Update and Delete, not {sorted(unknown)}")
        tables = None
        if entity_sets is not None:
            tables = frozenset(self.emulator.table(s).logical for s in entity_sets)
        filtering = None
        if filtering_attributes is not None:
            filtering = frozenset(a.lower() for a in filtering_attributes)
        reg = WebhookRegistration(str(uuid.uuid4()), url, frozenset(names), tables, dict(headers or {}), _mode(mode),
                                  filtering, pre_image, post_image, timeout, duplicate, retry_delay, name)
        self.registrations.append(reg)
        return reg

    def unregister(self, reg: WebhookRegistration) -> None:
        reg.enabled = False
        self.registrations = [r for r in self.registrations if r is not reg]

    # -- called by the emulator (data lock held) -----------------------------------------------------------------
    def written(self, t: Any, row_id: str, message: str, caller: str, before: dict | None) -> None:
        """One write of ``t`` row ``row_id``: Create / Update after it is stored, Delete before anything is removed
        (so a failing synchronous step leaves nothing to undo)."""
        regs = [r for r in self.registrations if r.enabled and message in r.messages
                and (r.tables is None or t.logical in r.tables)]
        if message == "Update":
            sent = set(self.emulator._last_changed.get((t.logical, row_id), ()))
            regs = [r for r in regs if r.filtering_attributes is None or sent & r.filtering_attributes]
        for reg in regs:
            delivery = self._delivery(reg, t, row_id, message, caller, before)
            if reg.mode == 0:
                self._send(delivery)
                self.deliveries.append(delivery)
                if not delivery.ok:
                    self._undo(t, row_id, message, before)
                    from emulators.dataverse import DataverseError

                    raise DataverseError(400, "0x80040265", f"The synchronous webhook step '{reg.name}' failed: "
                                                            f"{delivery.statuses[-1]} from {reg.url}.")
            else:
                self._enqueue(delivery)

    def _delivery(self, reg: WebhookRegistration, t: Any, row_id: str, message: str, caller: str,
                  before: dict | None) -> Delivery:
        emu = self.emulator
        row = emu._rows[t.logical].get(row_id)
        extra: dict[str, Any] = {"user_id": caller, "step_name": f"{reg.name}: {message} of {t.logical}"}
        if reg.post_image and message != "Delete" and row is not None:
            extra["post_image"] = {n: emu._sdk_value(t, t.columns[n], row.get(n)) for n in t.columns
                                   if n in row and n != "versionnumber"}
        prior = emu._serialize(t, before) if (before is not None and reg.pre_image and message == "Update") else None
        ctx = emu.webhook_context_for(t.set, row_id, message, None, prior, mode=reg.mode, **extra)
        if not reg.pre_image:
            ctx["PreEntityImages"] = []
        headers, body = wh.webhook_request(ctx, emu.ORG_HOST)
        headers.update(reg.headers)
        version = row.get("versionnumber") if (row is not None and message != "Delete") else None
        return Delivery(reg, message, t.logical, row_id, ctx, headers, body, version)

    def _undo(self, t: Any, row_id: str, message: str, before: dict | None) -> None:
        """A failed synchronous step rolls its write back (Create / Update; a Delete has not happened yet)."""
        if message == "Delete":
            return
        emu = self.emulator
        row = emu._rows[t.logical].get(row_id)
        version = row.get("versionnumber") if row else None
        emu._raw_store(t, row_id, before)
        for i in range(len(emu._changes) - 1, -1, -1):
            if emu._changes[i][:3] == (version, t.logical, row_id):
                del emu._changes[i]
                del emu._change_versions[i]
                break

    # -- delivery ------------------------------------------------------------------------------------------------
    def _send(self, d: Delivery) -> None:
        reg = d.registration
        for attempt in (1, 2):
            try:
                status: int | str = self.transport(reg.url, dict(d.headers), d.body, reg.timeout)
            except TimeoutError:
                status = "timeout"
            except Exception:  # noqa: BLE001 - no answer (connection refused, bad header...): a failed attempt
                status = "error"
            d.statuses.append(status)
            if isinstance(status, int) and 200 <= status < 300:
                d.ok = True
                return
            if attempt == 1 and status in RETRY_STATUSES:
                if reg.retry_delay:
                    time.sleep(reg.retry_delay)
                continue
            break
        d.ok = False

    def _committed(self, d: Delivery) -> bool:
        """Whether the write of an async delivery committed (waits for the write's lock to be released)."""
        t = self.emulator.tables[d.entity]
        with self.emulator.lock:
            row = self.emulator._rows[t.logical].get(d.row_id)
            if d.message == "Delete":
                return row is None
            if d.version is not None and d.version in self.emulator.rolled_back_versions:
                return False
            return row is not None and (d.version is None or row.get("versionnumber", 0) >= d.version)

    def _enqueue(self, d: Delivery) -> None:
        with self._cond:
            copies = [d] if not d.registration.duplicate else [d, Delivery(**{**d.__dict__, "statuses": [],
                                                                              "copy": 2})]
            if self._paused:
                self._held.extend(copies)
            else:
                self._pending.extend(copies)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dataverse-webhooks", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closed:
                    self._cond.wait(2.0)
                if self._closed or not self._pending:  # closed, or idle: the next delivery starts a new thread
                    self._thread = None
                    return
                d = self._pending.popleft()
                self._busy += 1
            try:
                if not self._committed(d):
                    d.dropped = True
                    self.dropped.append(d)
                else:
                    self._send(d)
                    self.deliveries.append(d)
                    if not d.ok:
                        self.failures.append(d)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    # -- test controls ---------------------------------------------------------------------------------------------
    def pause(self) -> None:
        """Hold async deliveries back (they are captured, not sent) until ``resume``."""
        with self._cond:
            self._paused = True

    def resume(self, *, reverse: bool = False, order: Callable[[list[Delivery]], list[Delivery]] | None = None) -> None:
        """Release held deliveries: in write order, reversed (out of order), or in ``order(held)``."""
        with self._cond:
            held, self._held, self._paused = self._held, [], False
            if order is not None:
                held = list(order(held))
            elif reverse:
                held.reverse()
            self._pending.extend(held)
            if held and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dataverse-webhooks", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    @property
    def held(self) -> list[Delivery]:
        with self._cond:
            return list(self._held)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every released async delivery was made. False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


# ---------------------------------------------------------------------------------------------------------------------
# The receiving end: an HTTP function with a queue output, and the queue-triggered function (tests, sandbox)
# ---------------------------------------------------------------------------------------------------------------------
class _Out:
    """Stands in for ``func.Out``: what the function put on its output binding."""

    def __init__(self) -> None:
        self.value: Any = None

    def set(self, value: Any) -> None:
        self.value = value

    def get(self) -> Any:
        return self.value


@dataclass
class QueuedMessage:
    id: str
    body: str
    dequeue_count: int = 0


class LocalFunctionEndpoint:
    """A loopback stand-in for the Functions host around one HTTP function with a queue output binding and the
    queue-triggered function that reads that queue.

    ``http_function(req, queue)`` and ``queue_function(msg)`` are the app's user functions (e.g.
    ``registered_functions()["dataverse_webhook"].get_user_function()``). They run on this endpoint's own event
    loop thread. Like the host: ``?code=`` (or ``x-functions-key``) must equal ``function_key`` when one is given
    (else 401); what the HTTP function set on its output is queued before the answer is sent; an exception is a 500
    and queues nothing; a queue message whose processing raises is delivered again, up to ``max_dequeue_count``
    times, then moved to ``poison``. ``cleanup`` (a coroutine function, e.g. the app's ``close_runtime``) runs on
    the loop at ``stop``.
    """

    def __init__(self, http_function: Callable[..., Awaitable[Any]],
                 queue_function: Callable[..., Awaitable[Any]] | None = None, *,
                 route: str = "/api/webhooks/dataverse", function_key: str | None = None,
                 max_dequeue_count: int = 5, cleanup: Callable[[], Awaitable[Any]] | None = None,
                 process_queue: bool = True):
        self.http_function = http_function
        self.queue_function = queue_function
        self.route = route
        self.function_key = function_key
        self.max_dequeue_count = max_dequeue_count
        self.cleanup = cleanup
        self.requests: list[tuple[int, float]] = []
        """(status, seconds) of every HTTP request answered."""
        self.processed: list[QueuedMessage] = []
        self.poison: list[QueuedMessage] = []
        self.errors: list[BaseException] = []
        self._ids = itertools.count(1)
        self._queue: collections.deque[QueuedMessage] = collections.deque()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._processing = process_queue
        self._running = True
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="functions-loop", daemon=True)
        self._loop_thread.start()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):  # noqa: A002
                pass

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload = endpoint._http(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._server_thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                               name="functions-http", daemon=True)
        self._server_thread.start()
        self._worker_thread = threading.Thread(target=self._work, name="functions-queue", daemon=True)
        self._worker_thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        query = f"?code={self.function_key}" if self.function_key else ""
        return f"http://{host}:{port}{self.route}{query}"

    def __enter__(self) -> "LocalFunctionEndpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- HTTP ------------------------------------------------------------------------------------------------------
    def _http(self, method: str, target: str, headers: dict, body: bytes) -> tuple[int, bytes]:
        import azure.functions as func

        started = time.perf_counter()
        parts = urlsplit(target)
        params = dict(parse_qsl(parts.query))
        if parts.path != self.route:
            return self._answer(404, {"error": {"code": "NotFound"}}, started)
        if method != "POST":
            return self._answer(405, {"error": {"code": "MethodNotAllowed"}}, started)
        lowered = {k.lower(): v for k, v in headers.items()}
        if self.function_key and self.function_key not in (params.get("code"), lowered.get("x-functions-key")):
            return self._answer(401, {"error": {"code": "Unauthorized"}}, started)
        req = func.HttpRequest(method, f"http://127.0.0.1{target}", headers=headers, body=body, params=params)
        out = _Out()
        try:
            resp = asyncio.run_coroutine_threadsafe(self.http_function(req, out), self.loop).result(timeout=120)
        except Exception as exc:  # noqa: BLE001 - the host answers 500 and writes no output
            self.errors.append(exc)
            return self._answer(500, {"error": {"code": "InternalServerError"}}, started)
        if out.value is not None:
            values = out.value if isinstance(out.value, list) else [out.value]
            with self._cond:
                for v in values:
                    self._queue.append(QueuedMessage(str(next(self._ids)), v if isinstance(v, str) else json.dumps(v)))
                self._cond.notify_all()
        self.requests.append((resp.status_code, time.perf_counter() - started))
        return resp.status_code, resp.get_body()

    def _answer(self, status: int, body: dict, started: float) -> tuple[int, bytes]:
        self.requests.append((status, time.perf_counter() - started))
        return status, json.dumps(body).encode()

    # -- the queue -------------------------------------------------------------------------------------------------
    def _work(self) -> None:
        import azure.functions as func

        while True:
            with self._cond:
                while self._running and (not self._processing or not self._queue or self.queue_function is None):
                    self._cond.wait()
                if not self._running:
                    return
                item = self._queue.popleft()
                item.dequeue_count += 1
                self._in_flight += 1
            msg = func.QueueMessage(id=item.id, body=item.body.encode("utf-8"))
            try:
                asyncio.run_coroutine_threadsafe(self.queue_function(msg), self.loop).result(timeout=300)
                self.processed.append(item)
            except Exception as exc:  # noqa: BLE001 - the queue delivers it again
                self.errors.append(exc)
                with self._cond:
                    if item.dequeue_count < self.max_dequeue_count:
                        self._queue.append(item)
                    else:
                        self.poison.append(item)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()

    @property
    def queued(self) -> list[QueuedMessage]:
        with self._cond:
            return list(self._queue)

    def pause_queue(self) -> None:
        with self._cond:
            self._processing = False

    def resume_queue(self) -> None:
        with self._cond:
            self._processing = True
            self._cond.notify_all()

    def drain(self, timeout: float = 60.0) -> bool:
        """Wait until the queue is empty and nothing is being processed. False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._in_flight or (self._queue and self._processing):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()
        if self.cleanup is not None:
            try:
                asyncio.run_coroutine_threadsafe(self.cleanup(), self.loop).result(timeout=30)
            except Exception:  # noqa: BLE001 - best effort at shutdown
                pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(timeout=5)
