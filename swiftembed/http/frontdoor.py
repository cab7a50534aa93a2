"""The front door: every HTTP request's way into the app and out of it.

Auth, the concurrency bound, dispatch to a route, and one send path for every answer (embeddings, errors,
streams) with its X-Processing-Time-Ms / X-Token-Count headers and its metrics. Routes are plain async functions
from the ASGI scope and `receive` to an `Answer`: for a one-text request a router, Response objects and header
wrappers would cost as much as the embedding.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NamedTuple

from starlette.types import Receive, Scope, Send

from swiftembed.http.wire import ErrorStyle, error_body
from swiftembed.service.inputs import INTERNAL_ERROR, OVERLOADED, UNAUTHORIZED, ApiError, bearer
from swiftembed.service.metrics import NO_MODEL, Metrics
from swiftembed.service.service import LoadMeter
from swiftembed.service.settings import Settings

log = logging.getLogger("swiftembed")

JSON = "application/json"


class Stream:
    """A body sent chunk by chunk; its producer counts texts and tokens as it goes, for the metrics at the end."""

    __slots__ = ("chunks", "texts", "tokens")

    def __init__(self) -> None:
        self.chunks: AsyncIterator[bytes] | None = None
        self.texts = self.tokens = 0


class Answer(NamedTuple):
    """A route's whole response. NamedTuple: built once per request, cheaper than any Response object."""

    body: bytes | Stream
    media_type: str = JSON
    status: int = 200
    headers: tuple[tuple[bytes, bytes], ...] = ()
    texts: int = 0
    tokens: int = 0
    model: str = NO_MODEL


Handler = Callable[[Scope, Receive], Awaitable[Answer]]


class Route(NamedTuple):
    """One entry of the route table, which the front door dispatches by and the OpenAPI document is checked
    against. `path` ending in `{id}` matches the prefix before it and anything after (/v1/models/{id});
    `open` routes answer without the API key."""

    path: str
    method: str
    handler: Handler
    open: bool = False


def error_answer(error: ApiError, style: ErrorStyle = "openai", model: str = NO_MODEL) -> Answer:
    headers = tuple((k.lower().encode(), v.encode()) for k, v in error.headers.items())
    return Answer(error_body(error, style), status=error.status, headers=headers, model=model)


class FrontDoor:
    """The ASGI app over a route table."""

    def __init__(self, table: list[Route], settings: Settings, metrics: Metrics, load: LoadMeter) -> None:
        self.routes: dict[str, dict[str, Handler]] = {}  # exact path -> method -> handler
        self.prefixes: dict[str, dict[str, Handler]] = {}  # prefix -> method -> handler
        for route in table:
            if route.path.endswith("{id}"):
                self.prefixes.setdefault(route.path.removesuffix("{id}"), {})[route.method] = route.handler
            else:
                self.routes.setdefault(route.path, {})[route.method] = route.handler
        self.open_paths = frozenset(route.path for route in table if route.open)
        self.settings, self.metrics = settings, metrics
        self.load = load  # the service's: the concurrency bound, and a replica's load for autoscaling
        self.expected = bearer(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":  # nothing to start or stop: the models are loaded before the app is built
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        else:  # websockets: not served
            await send({"type": "websocket.close", "code": 1003})

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        path = _route_path(scope)
        route, handler, error = self.find(path, scope["method"])
        error = self.refuse(scope, path) or error
        answer: Answer | None = None
        try:
            if handler is None or error is not None:
                answer = error_answer(error or INTERNAL_ERROR)
                await self.send(answer, scope, start, send)
                return
            self.load.enter()
            try:
                answer = await self.call(handler, route, scope, receive)
                await self.send(answer, scope, start, send)
            finally:
                self.load.exit()
        finally:
            self.record(route, answer, start)

    def record(self, route: str, answer: Answer | None, start: float) -> None:
        latency_ms = (time.perf_counter() - start) * 1e3
        if answer is None:  # the client left before the answer was made
            self.metrics.request(route, 500, latency_ms, 0, 0, NO_MODEL)
        elif isinstance(answer.body, Stream):
            self.metrics.request(route, answer.status, latency_ms, answer.body.texts, answer.body.tokens, answer.model)
        else:
            self.metrics.request(route, answer.status, latency_ms, answer.texts, answer.tokens, answer.model)

    def find(self, path: str, method: str) -> tuple[str, Handler | None, ApiError | None]:
        """(metric route label, handler, or the 404/405 to answer)."""
        route, methods = path, self.routes.get(path)
        if methods is None:
            for prefix, handlers in self.prefixes.items():
                if path.startswith(prefix):
                    route, methods = prefix + "{id}", handlers
                    break
            else:
                return "other", None, ApiError(404, f"no route {path}", type="not_found_error", code="not_found")
        handler = methods.get("GET" if method == "HEAD" else method)
        if handler is None:
            allow = ", ".join(methods)
            return route, None, ApiError(405, f"{path} takes {allow}", type="method_not_allowed",
                                         code="method_not_allowed", headers={"Allow": allow})
        return route, handler, None

    async def call(self, handler: Handler, route: str, scope: Scope, receive: Receive) -> Answer:
        try:
            return await handler(scope, receive)
        except ApiError as error:
            return error_answer(error)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], route)
            return error_answer(INTERNAL_ERROR)

    async def send(self, answer: Answer, scope: Scope, start: float, send: Send) -> None:
        """The one way out: status, headers and body (whole, or streamed chunk by chunk)."""
        headers = [(b"content-type", answer.media_type.encode()), *answer.headers,
                   (b"x-processing-time-ms", b"%.3f" % ((time.perf_counter() - start) * 1e3)),
                   (b"x-token-count", b"%d" % answer.tokens)]
        body = answer.body
        if isinstance(body, bytes):
            headers.append((b"content-length", b"%d" % len(body)))
            await send({"type": "http.response.start", "status": answer.status, "headers": headers})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
            return
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        assert body.chunks is not None
        async for chunk in body.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def refuse(self, scope: Scope, path: str) -> ApiError | None:
        if self.expected is not None and path not in self.open_paths:
            given = header(scope, b"authorization")
            if not hmac.compare_digest(given, self.expected):
                return UNAUTHORIZED
        if self.load.in_flight >= self.settings.max_concurrency:
            return OVERLOADED
        return None


def _route_path(scope: Scope) -> str:
    """The path below the mount point: under Serve with a route prefix, `path` still carries the prefix."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def header(scope: Scope, name: bytes) -> bytes:
    """One header straight from the ASGI scope: cheaper than building Starlette's Headers per request."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return b""


def media_type(content_type: bytes) -> str:
    """The media type of a raw Content-Type header value, without parameters."""
    return content_type.decode("latin-1").split(";", 1)[0].strip().lower()
