"""The standalone app with a deliberate leak of 1 KB per request: proves the soak's leak check can fail."""

from __future__ import annotations

import os

from starlette.types import Receive, Scope, Send

from swiftembed.core.catalog import Catalog
from swiftembed.http.server import standalone_app

LEAK_BYTES = 1024
_inner = standalone_app(Catalog.load(["potion-base-8M"]))
_kept: list[bytes] = []


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        _kept.append(os.urandom(LEAK_BYTES))  # random, so every page is really touched
    await _inner(scope, receive, send)
