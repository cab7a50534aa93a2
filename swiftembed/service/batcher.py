"""Request batching: concurrent requests' texts through one tokenize + pool + normalize call per model.

One implementation for both servers (the standalone uvicorn app and every Ray Serve replica). A lone request is
pooled at once, never held back: batching only starts when a probe (every `probe_every`-th request) finds company
in the same event-loop turn, and stops at the first batch of one. Under load, the requests that reach `pool` in
one turn (or within `wait_s`, when set) share a kernel call, up to `max_batch_size` requests; per request that
saves the half-dozen numpy calls that cost a one-text request as much as its tokenization. Large requests are
pooled on their own, and from `offload_from` texts in a worker thread so the event loop keeps accepting requests.
A batch groups its requests by model: one kernel call per model present.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import anyio
import numpy as np

from swiftembed.core.catalog import Served
from swiftembed.core.chunking import ChunkedText, chunk_sums
from swiftembed.core.pooling import normalize as normalize_rows
from swiftembed.core.sparse import SparseVector, sparse_counted
from swiftembed.service.settings import Settings


class Pooled(NamedTuple):
    """Token row sums and token counts of a request's texts, in order (`Embedder.finish` makes them vectors).

    `unit` holds the rows already L2-normalized when the backend normalized a whole batch of requests at once.
    """

    sums: np.ndarray
    tokens: list[int]
    unit: np.ndarray | None = None


class Backend(Protocol):
    """Where texts are tokenized and pooled."""

    async def pool(self, texts: list[str], model: Served) -> Pooled: ...

    async def chunk(self, texts: list[str], chunk_tokens: int, overlap_tokens: int, model: Served) -> list[ChunkedText]:
        ...

    async def sparse(self, texts: list[str], model: Served) -> tuple[list[SparseVector], int]: ...


log = logging.getLogger("swiftembed")

# Called once per kernel call with (model name, texts, requests, kernel milliseconds): batch metrics without a
# per-request cost.
BatchObserver = Callable[[str, int, int, float], None]
Waiting = list[tuple[list[str], "asyncio.Future[Pooled]"]]


class Batcher:
    """The Backend both servers use: in-process pooling, batched across concurrent requests."""

    def __init__(
        self,
        *,
        max_batch_size: int = Settings.max_batch_size,
        wait_s: float = Settings.batch_wait_timeout_s,
        offload_from: int = 1024,
        offload_chars: int = 100_000,
        batch_below: int = 16,
        probe_every: int = 64,
        observe: BatchObserver | None = None,
    ) -> None:
        self.offload_from = offload_from
        self.offload_chars = offload_chars  # documents to chunk: from this many characters, in a worker thread
        self.batch_below = batch_below  # requests with more texts are pooled on their own
        self.probe_every = probe_every
        self.observe = observe
        self.configure(max_batch_size, wait_s)
        self.largest_batch = 0
        self.batching = False  # whether the last batch found company: then every request joins one
        self._batch: dict[Served, Waiting] | None = None  # requests waiting for the next kernel calls, by model
        self._waiting = 0
        self._timer: asyncio.Handle | None = None
        self._since_probe = 0

    @classmethod
    def from_settings(cls, settings: Settings, observe: BatchObserver | None = None) -> Batcher:
        """The batcher of a server with these settings (batch size and wait)."""
        return cls(max_batch_size=settings.max_batch_size, wait_s=settings.batch_wait_timeout_s, observe=observe)

    def configure(self, max_batch_size: int, wait_s: float) -> None:
        """Requests per kernel call and how long a batch may wait for more (0: only the current loop turn)."""
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError("max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")
        self.max_batch_size, self.wait_s = max_batch_size, wait_s

    async def pool(self, texts: list[str], model: Served) -> Pooled:
        if len(texts) >= self.offload_from:
            return await anyio.to_thread.run_sync(self.pool_now, texts, model)
        if len(texts) >= self.batch_below:
            return self.pool_now(texts, model)
        if self._batch is None and not self.batching:
            self._since_probe += 1
            if self._since_probe < self.probe_every:
                return self.pool_now(texts, model)
            self._since_probe = 0
        loop = asyncio.get_running_loop()
        if self._batch is None:
            self._batch = {}
            self._timer = loop.call_later(self.wait_s, self._flush) if self.wait_s else loop.call_soon(self._flush)
        future: asyncio.Future[Pooled] = loop.create_future()
        self._batch.setdefault(model, []).append((texts, future))
        self._waiting += 1
        if self._waiting >= self.max_batch_size:
            self._flush()
        return await future

    async def chunk(self, texts: list[str], chunk_tokens: int, overlap_tokens: int, model: Served) -> list[ChunkedText]:
        """Each document's chunk sums from one pass over it (swiftembed/core/chunking.py). Not batched across requests:
        a document is a batch of its own; long ones go to a worker thread so the event loop keeps serving."""
        if self.long_documents(texts):
            return await anyio.to_thread.run_sync(chunk_sums, model.embedder, texts, chunk_tokens, overlap_tokens)
        return chunk_sums(model.embedder, texts, chunk_tokens, overlap_tokens)

    def long_documents(self, texts: Sequence[str]) -> bool:
        """Whether documents to chunk are long enough to chunk in a worker thread."""
        return sum(map(len, texts)) >= self.offload_chars

    async def sparse(self, texts: list[str], model: Served) -> tuple[list[SparseVector], int]:
        """Sparse vectors and the token count: tokenization and one np.unique, not batched across requests (no
        kernel call to share); many texts go to a worker thread."""
        if len(texts) >= self.offload_from:
            return await anyio.to_thread.run_sync(self.sparse_now, texts, model)
        return self.sparse_now(texts, model)

    def sparse_now(self, texts: list[str], model: Served) -> tuple[list[SparseVector], int]:
        return sparse_counted(model.embedder, texts)

    def pool_now(self, texts: list[str], model: Served) -> Pooled:
        start = time.perf_counter()
        pooled = Pooled(*model.embedder.pool_texts(texts, mean=False))
        if self.observe is not None:
            self.observe(model.name, len(texts), 1, (time.perf_counter() - start) * 1e3)
        return pooled

    def _flush(self) -> None:
        groups, self._batch = self._batch or {}, None
        requests, self._waiting = self._waiting, 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not requests:
            return
        self.batching = requests > 1
        self.largest_batch = max(self.largest_batch, requests)
        for model, waiting in groups.items():
            self._pool_group(model, waiting)

    def _pool_group(self, model: Served, waiting: Waiting) -> None:
        """One kernel call for one model's waiting requests; each gets its rows."""
        texts = [text for request, _ in waiting for text in request]
        start = time.perf_counter()
        try:
            sums, tokens = model.embedder.pool_texts(texts, mean=False)
            unit = normalize_rows(sums.copy())
        except Exception as exc:  # each request answers for itself (a 500 from the front door), none hangs
            log.warning("kernel call of %d requests for model %s failed: %r", len(waiting), model.name, exc)
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        if self.observe is not None:
            self.observe(model.name, len(texts), len(waiting), (time.perf_counter() - start) * 1e3)
        at = 0
        for request, future in waiting:
            end = at + len(request)
            if not future.done():  # a request whose client left has been cancelled
                future.set_result(Pooled(sums[at:end], tokens[at:end], unit[at:end]))
            at = end
