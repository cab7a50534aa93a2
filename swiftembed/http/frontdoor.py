"""The front door: every HTTP request's way into the app and out of it.

Auth, the concurrency bound, reading the request body (its size limit, its deadlines, JSON), dispatch to a route,
and one send path for every answer (embeddings, errors, streams) with its X-Processing-Time-Ms / X-Token-Count
headers and its metrics. So a request's data goes one way: the front door hands a route the parsed body, the route
hands back an `Answer`, and no route calls back into HTTP mechanics. Routes are plain async functions: for a
one-text request a router, Request/Response objects and header wrappers would cost as much as the embedding.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import orjson
from starlette.types import Receive, Scope, Send

from swiftembed.http.wire import ErrorStyle, error_body
from swiftembed.service.inputs import INTERNAL_ERROR, OVERLOADED, UNAUTHORIZED, ApiError, bearer, invalid, kind
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


Handler = Callable[[Scope, Receive], Awaitable[Answer]]  # reads what it needs itself (query, streamed body)
JsonHandler = Callable[[Scope, dict[str, Any]], Awaitable[Answer]]  # given the body, read and parsed


class Route(NamedTuple):
    """One entry of the route table, which the front door dispatches by and the OpenAPI document is built from.

    `path` ending in `{id}` matches the prefix before it and anything after (/v1/models/{id}). `body` and
    `answer` name the JSON request and response schemas (swiftembed/http/openapi.py); a route with a `body` is
    handed it read and parsed. `open` routes answer without the API key. `errors` is the shape of the errors
    from reading the body and from the route itself (Cohere's SDK reads only its own); the refusals before a
    route is called (401, 503) are the same on every route.
    """

    path: str
    method: str
    handler: Handler | JsonHandler
    body: str | None = None
    answer: str | None = None
    open: bool = False
    errors: ErrorStyle = "openai"


def error_answer(error: ApiError, style: ErrorStyle = "openai", model: str = NO_MODEL) -> Answer:
    headers = tuple((k.lower().encode(), v.encode()) for k, v in error.headers.items())
    return Answer(error_body(error, style), status=error.status, headers=headers, model=model)


class FrontDoor:
    """The ASGI app over a route table."""

    def __init__(self, table: list[Route], settings: Settings, metrics: Metrics, load: LoadMeter) -> None:
        self.routes: dict[str, dict[str, Route]] = {}  # exact path -> method -> route
        self.prefixes: dict[str, dict[str, Route]] = {}  # prefix -> method -> route
        for route in table:
            if route.path.endswith("{id}"):
                self.prefixes.setdefault(route.path.removesuffix("{id}"), {})[route.method] = route
            else:
                self.routes.setdefault(route.path, {})[route.method] = route
        self.open_paths = frozenset(route.path for route in table if route.open)
        self.settings, self.metrics = settings, metrics
        self.load = load  # the service's: the concurrency bound, and a replica's load for autoscaling
        self.expected = bearer(settings)
        self._deadlines: BodyDeadlines | None = None  # the body-read deadlines of the loop this app runs on

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
        label, route, error = self.find(path, scope["method"])
        error = self.refuse(scope, path) or error
        answer: Answer | None = None
        try:
            if route is None or error is not None:
                answer = error_answer(error or INTERNAL_ERROR)
                await self.send(answer, scope, start, send)
                return
            self.load.enter()
            try:
                answer = await self.call(route, label, scope, receive)
                await self.send(answer, scope, start, send)
            finally:
                self.load.exit()
        finally:
            self.record(label, answer, start)

    def record(self, route: str, answer: Answer | None, start: float) -> None:
        latency_ms = (time.perf_counter() - start) * 1e3
        if answer is None:  # the client left before the answer was made
            self.metrics.request(route, 500, latency_ms, 0, 0, NO_MODEL)
        elif isinstance(answer.body, Stream):
            self.metrics.request(route, answer.status, latency_ms, answer.body.texts, answer.body.tokens, answer.model)
        else:
            self.metrics.request(route, answer.status, latency_ms, answer.texts, answer.tokens, answer.model)

    def find(self, path: str, method: str) -> tuple[str, Route | None, ApiError | None]:
        """(metric route label, route, or the 404/405 to answer)."""
        route, methods = path, self.routes.get(path)
        if methods is None:
            for prefix, handlers in self.prefixes.items():
                if path.startswith(prefix):
                    route, methods = prefix + "{id}", handlers
                    break
            else:
                return "other", None, ApiError(404, f"no route {path}", type="not_found_error", code="not_found")
        found = methods.get("GET" if method == "HEAD" else method)
        if found is None:
            allow = ", ".join(methods)
            return route, None, ApiError(405, f"{path} takes {allow}", type="method_not_allowed",
                                         code="method_not_allowed", headers={"Allow": allow})
        return route, found, None

    async def call(self, route: Route, label: str, scope: Scope, receive: Receive) -> Answer:
        try:
            if route.body is not None:
                return await route.handler(scope, await self.read_json(scope, receive))  # type: ignore[arg-type]
            return await route.handler(scope, receive)  # type: ignore[arg-type]
        except ApiError as error:
            return error_answer(error, route.errors)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], label)
            return error_answer(INTERNAL_ERROR, route.errors)

    async def read_json(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """The body as a JSON object (400 not JSON, 422 not an object, 413 over `max_body_bytes`, 408 too slow,
        415 another Content-Type), read from `receive` directly: Request.stream()'s async generator costs more
        than a small body."""
        content_type = header(scope, b"content-type")
        if content_type and content_type != b"application/json":  # the exact usual value needs no parsing
            given = media_type(content_type)
            if given and given != JSON and not given.endswith("+json"):
                raise ApiError(415, f"Content-Type must be application/json, got {given}",
                               code="unsupported_media_type")
        limit = self.settings.max_body_bytes
        check_length(scope, limit)
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        chunk_s = self.settings.body_chunk_timeout_s
        now = loop.time()
        deadline = now + self.settings.body_timeout_s
        task, deadlines = asyncio.current_task(), self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._deadlines = BodyDeadlines(loop)
        assert task is not None
        deadlines.watch(task, min(now + chunk_s, deadline))
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _cut_short()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large(limit)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
                deadlines.due[task] = min(loop.time() + chunk_s, deadline)
        except asyncio.CancelledError:
            if not deadlines.expired(task):
                raise
            raise _timed_out() from None
        finally:
            deadlines.forget(task)
        try:
            value = orjson.loads(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(value, dict):
            raise invalid(f"request body must be a JSON object, got {kind(value)}")
        return value

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


async def body_chunks(receive: Receive, chunk_timeout_s: float) -> AsyncIterator[bytes]:
    """A streamed body's chunks as they arrive; 408 when the next one takes over `chunk_timeout_s`."""
    more = True
    while more:
        try:
            async with asyncio.timeout(chunk_timeout_s):
                message = await receive()
        except TimeoutError:
            raise _timed_out() from None
        if message["type"] == "http.disconnect":
            raise _cut_short()
        more = message.get("more_body", False)
        yield message.get("body", b"")


def check_length(scope: Scope, limit: int) -> None:
    """413 at once for a declared Content-Length over `limit` (the body is then never read)."""
    length = header(scope, b"content-length")
    if length and (not length.isdigit() or int(length) > limit):
        raise too_large(limit)


class BodyDeadlines:
    """Deadlines for reading request bodies on one event loop, kept by a task that sweeps them every TICK_S and
    cancels the readers past theirs (so a deadline fires up to TICK_S late). An asyncio timer per request
    (`asyncio.timeout`) cost ~7 us of a one-text request, a fifth of what the route itself does."""

    TICK_S = 0.1

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.due: dict[asyncio.Task[Any], float] = {}
        self.fired: set[asyncio.Task[Any]] = set()
        self.sweeper: asyncio.Task[None] | None = None

    def watch(self, task: asyncio.Task[Any], deadline: float) -> None:
        self.due[task] = deadline
        if self.sweeper is None:
            self.sweeper = self.loop.create_task(self.sweep())

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """Whether the sweep cancelled `task` (its cancellation then taken back), rather than anyone else."""
        if task not in self.fired:
            return False
        task.uncancel()
        return True

    def forget(self, task: asyncio.Task[Any]) -> None:
        del self.due[task]
        self.fired.discard(task)

    async def sweep(self) -> None:
        try:
            while self.due:  # ends when no body is being read; the next reader starts it again
                await asyncio.sleep(self.TICK_S)
                now = self.loop.time()
                for task, deadline in list(self.due.items()):
                    if deadline <= now and task not in self.fired:
                        self.fired.add(task)
                        task.cancel()
        finally:
            self.sweeper = None


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than the limit of {limit} bytes", code="payload_too_large")


def _timed_out() -> ApiError:
    """A body that stopped arriving: 408, and the connection closed (what is left of the body is never read)."""
    return ApiError(408, "the request body did not arrive in time", code="request_timeout",
                    headers={"Connection": "close"})


def _cut_short() -> ApiError:
    return ApiError(400, "the request body ended before its declared length", code="incomplete_body")
