"""A minimal local stand-in for the Functions host's HTTP front end, for the sandbox's ``--serve`` mode.

It routes ``/api/<route>`` to the registered functions exactly as their bindings declare (methods, route
templates) and calls them as the unit-test pattern does. It is no replacement for Core Tools (no keys, no other
triggers): with Core Tools installed, use ``func start``.
"""
from __future__ import annotations

import asyncio
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func


def _routes(functions) -> list[tuple[re.Pattern, set[str], object]]:
    routes = []
    for fn in functions:
        for raw in fn.get_raw_bindings():
            b = json.loads(raw)
            if b["type"] == "httpTrigger":
                pattern = re.sub(r"\{(\w+)(?::[^}]*)?\}", r"(?P<\1>[^/]+)", b["route"])
                routes.append((re.compile(f"^/api/{pattern}$"), set(b["methods"]), fn))
    return routes


class LocalHost:
    def __init__(self, functions, port: int = 7071):
        self.routes = _routes(functions)
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

    def dispatch(self, method: str, target: str, headers: dict, body: bytes):
        parts = urlsplit(target)
        allowed = False
        for pattern, methods, fn in self.routes:
            m = pattern.match(parts.path)
            if not m:
                continue
            allowed = True
            if method not in methods:
                continue
            req = func.HttpRequest(method, f"http://127.0.0.1:{self.port}{target}", headers=headers, body=body,
                                   params=dict(parse_qsl(parts.query)), route_params=m.groupdict())
            resp = asyncio.run_coroutine_threadsafe(fn.get_user_function()(req), self.loop).result()
            out_headers = dict(resp.headers)
            out_headers.setdefault("Content-Type", resp.mimetype or "application/json")
            return resp.status_code, out_headers, resp.get_body()
        status = 405 if allowed else 404
        return status, {"Content-Type": "application/json"}, json.dumps(
            {"error": {"code": "NotFound" if status == 404 else "MethodNotAllowed",
                       "message": f"No function for {method} {parts.path}."}}).encode()

    def serve_forever(self):
        self.server.serve_forever()


_FUNCTIONS: dict | None = None


def registered_functions() -> dict:
    """name -> Function of the app. Cached: ``FunctionApp.get_functions()`` refuses to run twice on one app
    (it re-validates names against those it recorded the first time)."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        import function_app

        _FUNCTIONS = {f.get_function_name(): f for f in function_app.app.get_functions()}
    return _FUNCTIONS


def http_binding(fn) -> dict:
    for raw in fn.get_raw_bindings():
        binding = json.loads(raw)
        if binding["type"] == "httpTrigger":
            return binding
    raise ValueError(f"{fn.get_function_name()} has no HTTP trigger")


async def invoke(name: str, method: str = "GET", *, body=None, raw: bytes | None = None,
                 route: dict | None = None, params: dict | None = None,
                 headers: dict | None = None) -> func.HttpResponse:
    """Call the registered HTTP function ``name`` as Microsoft documents for unit tests (a ``func.HttpRequest``
    to the function's user code)."""
    from urllib.parse import urlencode

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
    return await fn.get_user_function()(req)
