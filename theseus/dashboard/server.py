"""The dashboard's web app (Starlette) and the server it runs on (uvicorn).

Pages are static files whose scripts fetch JSON from `/api/...` and put every name and value
into the page as text, never as markup. `Guard` keeps the app to the people it is meant for:
on 127.0.0.1 it answers only requests addressed to this machine's own names (a web page cannot
reach it through a DNS name it controls); on any other address every request needs the token
printed at start. A request that changes something (cancel) must be JSON, which a page of
another site cannot send without the browser asking first.
"""

from __future__ import annotations

import http.cookies
import ipaddress
import secrets
import socket
import threading
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from theseus.dashboard import details
from theseus.dashboard.runs import Catalog, NotFound, Run
from theseus.dashboard.series import POINTS
from theseus.errors import UserError

STATIC = Path(__file__).parent / "static"
COOKIE = "theseus_dashboard"
LOCAL_NAMES = {"127.0.0.1", "localhost", "::1"}
HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """ASGI middleware: the host check or the token, JSON-only changes, and safe headers."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        name = _hostname(host)
        set_cookie = False
        if self.token is None:
            if name not in LOCAL_NAMES:
                return await _refuse(send, 403, "this dashboard answers only on 127.0.0.1")
        else:
            given = _token_of(scope, headers)
            if given is None or not secrets.compare_digest(given, self.token):
                return await _refuse(
                    send, 401, "this dashboard needs its token: open the address it printed"
                )
            set_cookie = COOKIE not in _cookies(headers)
        if scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            json_body = headers.get("content-type", "").startswith("application/json")
            if not json_body or (
                origin is not None and urllib.parse.urlsplit(origin).netloc != host
            ):
                return await _refuse(send, 403, "changes come from the dashboard's own pages")

        async def guarded(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + HEADERS
                if set_cookie:
                    cookie = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                    message["headers"].append((b"set-cookie", cookie.encode()))
            await send(message)

        await self.app(scope, receive, guarded)


def _hostname(host: str) -> str:
    """The name in a Host header: `127.0.0.1:8765` -> `127.0.0.1`, `[::1]:8765` -> `::1`."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rsplit(":", 1)[0] if ":" in host else host


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    jar = http.cookies.SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except http.cookies.CookieError:
        return {}
    return {k: v.value for k, v in jar.items()}


def _token_of(scope: Scope, headers: dict[str, str]) -> str | None:
    query = urllib.parse.parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("token"):
        return query["token"][0]
    auth = headers.get("authorization", "")
    if auth.startswith("Bearer "):
        return auth[7:]
    return _cookies(headers).get(COOKIE)


async def _refuse(send: Send, status: int, message: str) -> None:
    body = message.encode() + b"\n"
    start = [(b"content-type", b"text/plain; charset=utf-8"), *HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


def create_app(catalog: Catalog, token: str | None = None) -> Any:
    """The dashboard over `catalog`'s runs; `token` None: answer only on this machine's names."""

    def run_of(request: Request) -> Run:
        return catalog.get(request.query_params.get("run", ""))

    def page(name: str) -> Callable[[Request], Response]:
        def serve(request: Request) -> Response:
            return FileResponse(STATIC / name, media_type="text/html")

        return serve

    def runs(request: Request) -> Response:
        found = catalog.runs()
        seen = catalog.observations(found)
        rows = [
            catalog.summary(run, seen.get(run.record.name) if run.record else None) for run in found
        ]
        return JSONResponse({"runs": rows, "roots": [str(r) for r in catalog.roots]})

    def run(request: Request) -> Response:
        found = run_of(request)
        seen = catalog.observations([found]) if found.record else {}
        shown = {
            **catalog.summary(found, seen.get(found.name)),
            "folder": found.folder,
            "where": found.files.where,
            "resume": found.resume_command(),
        }
        if request.query_params.get("full"):  # what changes seldom, asked for less often
            shown["config"] = details.config_text(found)
            shown["checkpoints"] = details.checkpoints(found, catalog.metrics(found))
            shown["samples"] = details.samples(found)
        return JSONResponse(shown)

    def metrics(request: Request) -> Response:
        found = run_of(request)
        x = request.query_params.get("x", "step")
        if x not in ("step", "tokens"):
            return JSONResponse({"error": "x is step or tokens"}, status_code=400)
        try:
            points = min(max(int(request.query_params.get("points", POINTS)), 10), 20000)
        except ValueError:
            return JSONResponse({"error": "points is a number"}, status_code=400)
        chart = catalog.metrics(found).chart(x, points)
        if request.query_params.get("since") == chart["version"]:
            return JSONResponse({"version": chart["version"], "unchanged": True})
        return JSONResponse(chart)

    def log(request: Request) -> Response:
        return JSONResponse(details.log_tail(run_of(request)))

    def config(request: Request) -> Response:
        text = details.config_text(run_of(request))
        if text is None:
            return PlainTextResponse("no config.yaml\n", status_code=404)
        return PlainTextResponse(
            text, headers={"content-disposition": 'attachment; filename="config.yaml"'}
        )

    def diff(request: Request) -> Response:
        chosen = [catalog.get(i) for i in request.query_params.getlist("run")]
        rows = details.config_diff([details.config_text(r) for r in chosen])
        return JSONResponse({"runs": [r.id for r in chosen], "keys": rows})

    async def cancel(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"error": "send {run, confirm}"}, status_code=400)
        found = catalog.get(str(body.get("run", "")))
        if found.record is None:
            return JSONResponse({"error": f"{found.name} was not submitted"}, status_code=409)
        if body.get("confirm") != found.record.name:
            return JSONResponse({"error": "confirm with the run's name"}, status_code=400)
        from starlette.concurrency import run_in_threadpool

        from theseus.dispatch.control import cancel as cancel_run

        await run_in_threadpool(cancel_run, found.record)
        return JSONResponse({"cancelled": found.record.name, "host": found.record.host_name})

    async def not_found(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=404)

    async def refused(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": str(exc)}, status_code=409)

    routes = [
        Route("/", page("index.html")),
        Route("/run", page("run.html")),
        Route("/compare", page("compare.html")),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Route("/api/runs", runs),
        Route("/api/run", run),
        Route("/api/metrics", metrics),
        Route("/api/log", log),
        Route("/api/config", config),
        Route("/api/diff", diff),
        Route("/api/cancel", cancel, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {NotFound: not_found, UserError: refused}
    return Guard(Starlette(routes=routes, exception_handlers=handlers), token)


class Dashboard:
    """The app served by uvicorn on a socket bound here (so the port is known at once; port 0
    picks a free one), in the foreground (`serve`) or on a thread (`start`, for tests)."""

    def __init__(self, roots: list[Path], host: str = "127.0.0.1", port: int = 8765) -> None:
        self.catalog = Catalog(roots)
        self.token = None if is_local(host) else secrets.token_urlsafe(24)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise UserError(
                f"dashboard: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "choose another --port"
            ) from None
        self.host, self.port = host, self.socket.getsockname()[1]
        self.socket.listen(128)
        import uvicorn

        config = uvicorn.Config(
            create_app(self.catalog, self.token), log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        address = f"http://{host}:{self.port}/"
        return f"{address}?token={self.token}" if self.token else address

    def serve(self) -> None:
        self.server.run(sockets=[self.socket])

    def start(self) -> Dashboard:
        self._thread = threading.Thread(target=self.serve, daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the dashboard server did not start")
            threading.Event().wait(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()
