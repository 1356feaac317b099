"""The explorer's web app: JSON endpoints over one loaded network and the page's three static files.

:func:`open_source` loads what ``shardlab eval`` loads (a checkpoint, ``oracle:NAME`` with a
recipe, or a weights file with a recipe) into a session; :func:`make_app` serves it with Starlette
and :func:`serve` runs that with uvicorn. Requests are stateless (the page sends the whole maze each
time) and strictly checked (``explore.validate``): bad input is a 4xx with ``{"error": one line}``,
never a 5xx. The browser can name no file: only the shipped static files are served.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import traceback
from typing import Any, Awaitable, Callable, Optional

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from shardlab.explore import validate
from shardlab.explore.validate import MAX_BODY, RequestError, one_line

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "explore.js": "text/javascript; charset=utf-8",
                "explore.css": "text/css; charset=utf-8"}


class ExploreError(ValueError):
    """A network the explorer cannot open (one line): a missing or unsafe file, a wrong recipe, an unknown kind."""


SOURCE_ERRORS = (ExploreError,)
# the POST endpoints of each kind of session: path → (request schema, the session's method)
ENDPOINTS = {"maze": {"/api/maze/new": (validate.MAZE_NEW, "new_maze"),
                      "/api/maze/import": (validate.MAZE_IMPORT, "import_maze"),
                      "/api/maze/export": (validate.MAZE_EXPORT, "export_maze"),
                      "/api/maze/view": (validate.MAZE_VIEW, "view"),
                      "/api/maze/play": (validate.MAZE_PLAY, "play")},
             "dt": {"/api/dt/view": (validate.DT_VIEW, "view"), "/api/dt/play": (validate.DT_PLAY, "play")}}
Session = Any  # MazeSession or DTSession


# -- loading -----------------------------------------------------------------------------------------
def open_source(checkpoint: Optional[str], weights: Optional[str] = None, recipe: Optional[str] = None) -> Session:
    """A session over what ``shardlab eval`` would evaluate, loaded as it loads it
    (``evals.suite.evaluator.load_source``); ExploreError (one line) otherwise."""
    from shardlab.configs.checks import ConfigError
    from shardlab.evals.suite.evaluator import load_source
    from shardlab.trainers.checkpointing import CheckpointError

    try:
        return open_session(load_source(checkpoint, weights, recipe, verb="explore"))
    except ExploreError:
        raise
    except (CheckpointError, ConfigError, ValueError) as exc:
        raise ExploreError(one_line(exc, 500)) from None


def open_session(trained: Any) -> Session:
    """The session for a loaded network by its training kind: maze PPO or decision transformer."""
    if trained.kind == "ppo":
        from shardlab.explore.maze_session import MazeSession
        return MazeSession(trained)
    if trained.kind == "dt":
        from shardlab.explore.dt_session import DTSession
        return DTSession(trained)
    raise ExploreError(f"{trained.path} is a {trained.kind!r} network; the explorer shows maze policies (algo ppo) "
                       "and decision transformers (algo dt)")


# -- responses ---------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """JSON-ready data: numpy scalars and arrays to Python, non-finite floats to null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value


class _JSON(JSONResponse):
    """JSON without NaN: non-finite floats become null (a browser's JSON.parse refuses NaN)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(_plain(content), allow_nan=False, separators=(",", ":")).encode("utf-8")


def error(status: int, message: str) -> JSONResponse:
    """``{"error": message}`` (one line) with ``status``."""
    return _JSON({"error": one_line(message)}, status_code=status)


async def _body(request: Request) -> bytes:
    """The request body, refusing (413) more than MAX_BODY bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY:
        raise RequestError(f"request body of {int(declared)} bytes is over the {MAX_BODY // 1024} KiB limit", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise RequestError(f"request body is over the {MAX_BODY // 1024} KiB limit", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _endpoint(schema: validate.Schema, method: Callable[[dict], dict]) -> Callable[[Request], Awaitable[Response]]:
    """A POST handler: read and check the body, run ``method`` in a worker thread, answer JSON."""
    async def handle(request: Request) -> Response:
        try:
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                # a web page elsewhere cannot send this without a CORS preflight, which the server never grants
                raise RequestError(f"send the body as JSON with Content-Type: application/json, not "
                                   f"{kind[:60] or 'no content type'}", 415)
            body = validate.check_body(await _body(request), schema)
            return _JSON(await run_in_threadpool(method, body))
        except RequestError as exc:
            return error(exc.status, str(exc))
        except Exception as exc:  # a bug, not bad input: say so in one line, keep the traceback on stderr
            return _internal(request, exc)
    return handle


def _internal(request: Request, exc: BaseException) -> JSONResponse:
    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    return error(500, f"internal error in {request.url.path}: {type(exc).__name__}: {exc}")


# -- the app -----------------------------------------------------------------------------------------
def make_app(session: Session) -> Starlette:
    """The Starlette app serving ``session``'s endpoints and the page."""
    async def info(request: Request) -> Response:
        try:
            return _JSON(session.info())
        except Exception as exc:
            return _internal(request, exc)

    async def index(request: Request) -> Response:
        return _static_file("index.html")

    async def static(request: Request) -> Response:
        return _static_file(request.path_params["name"])

    routes = [Route("/", index, methods=["GET"]), Route("/static/{name}", static, methods=["GET"]),
              Route("/api/info", info, methods=["GET"])]
    routes += [Route(path, _endpoint(schema, getattr(session, method)), methods=["POST"])
               for path, (schema, method) in ENDPOINTS[session.kind].items()]
    other = [path for kind, paths in ENDPOINTS.items() if kind != session.kind for path in paths]

    shows = "a maze policy" if session.kind == "maze" else "a decision transformer"

    async def wrong_kind(request: Request) -> Response:
        wants = "decision transformers" if "/dt/" in request.url.path else "maze policies"
        return error(404, f"{request.url.path} is for {wants}; this server shows {shows} (see /api/info)")
    routes += [Route(path, wrong_kind, methods=["POST"]) for path in other]

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return error(404, f"no such path: {request.url.path[:100]}; the API is under /api (see /api/info)")
        if exc.status_code == 405:
            allowed = exc.headers.get("Allow", "") if exc.headers else ""
            response = error(405, f"{request.method} is not allowed on {request.url.path[:100]}; "
                                  f"use {allowed or 'another method'}")
            if allowed:
                response.headers["Allow"] = allowed
            return response
        return error(exc.status_code, str(exc.detail))

    async def crash(request: Request, exc: Exception) -> Response:
        return _internal(request, exc)

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: crash})


def _static_file(name: str) -> Response:
    """One of the shipped static files by its fixed name; 404 for anything else or a missing file."""
    if name not in STATIC_FILES:
        return error(404, f"no static file {name[:60]!r}; the page's files are {', '.join(STATIC_FILES)}")
    path = os.path.join(STATIC_DIR, name)
    if not os.path.isfile(path):
        return error(404, f"static/{name} is not installed; reinstall shardlab with its package data")
    return FileResponse(path, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


# -- serving -----------------------------------------------------------------------------------------
def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)  # now: a browser opened on the printed URL queues until uvicorn accepts
    except OSError:
        sock.close()
        raise
    return sock


def url_of(host: str, port: int) -> str:
    """The address to open in a browser."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def serve(session: Session, host: str = "127.0.0.1", port: int = 0, quiet: bool = False,
          open_browser: bool = False) -> int:
    """Serve ``session`` on ``host:port`` (0: a free port) until Ctrl-C; prints the URL and
    returns 0, or 2 with one line on stderr when the address cannot be used."""
    import uvicorn

    try:
        sock = _bind(host, port)
    except (OSError, UnicodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"shardlab explore: error: cannot listen on {host}:{port} ({why}); pick another --port (0: any free "
              "one) or --host", file=sys.stderr)
        return 2
    url = url_of(host, sock.getsockname()[1])
    print(f"shardlab explore: serving {session.info().get('source')} at {url} (Ctrl-C stops)", flush=True)
    if open_browser:
        import webbrowser
        webbrowser.open(url)
    app = make_app(session)
    if host in ("127.0.0.1", "localhost"):
        # only this machine's names: a web page cannot reach the server through a name it controls (DNS rebinding)
        from starlette.middleware.trustedhost import TrustedHostMiddleware
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])
    config = uvicorn.Config(app, log_level="warning" if quiet else "info", access_log=not quiet)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises Ctrl-C: the normal way to stop
        pass
    finally:
        sock.close()
    return 0

