"""Which of SwiftEmbed's files one warm request passes through, in order: the path a newcomer must read.

    .venv/bin/python benchmarks/trace_request.py [--path /v1/embeddings] [--json out.json]

The request goes to the standalone server's ASGI app in-process (no socket), warmed by one request first; a
profile hook records every call into a function of the package. Reported: the functions called, the files they
live in, and how often each file is entered (called into from another file, or from outside the package).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PACKAGE = ROOT / "swiftembed"

BODIES = {
    "/v1/embeddings": {"model": "potion-base-8M", "input": ["a dog runs in the park"]},
    "/embed": {"texts": ["a dog runs in the park"]},
}


async def call(app: Any, path: str, body: bytes) -> int:
    scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"]


def trace(path: str) -> dict[str, Any]:
    from swiftembed.core.catalog import Catalog
    from swiftembed.http.server import standalone_app

    app = standalone_app(Catalog.load())
    body = json.dumps(BODIES[path]).encode()
    calls: list[tuple[str, str, bool]] = []  # (file, function, entered from another file)

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            name = frame.f_code.co_filename
            if name.startswith(str(PACKAGE)):
                caller = frame.f_back.f_code.co_filename if frame.f_back is not None else ""
                calls.append((str(Path(name).relative_to(ROOT)), frame.f_code.co_qualname, caller != name))

    async def run() -> int:
        await call(app, path, body)  # warm: first-use imports and caches
        sys.setprofile(profile)
        try:
            return await call(app, path, body)
        finally:
            sys.setprofile(None)

    status = asyncio.run(run())
    entries = [file for file, _, entered in calls if entered]
    counts = {file: entries.count(file) for file in dict.fromkeys(entries)}
    return {"path": path, "status": status, "functions": len(calls), "files": list(counts),
            "entries": len(entries), "entries_by_file": counts, "order": entries}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=sorted(BODIES), default="/v1/embeddings")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = trace(args.path)
    print(f"{result['path']} ({result['status']}): {result['functions']} functions in {len(result['files'])} files, "
          f"{result['entries']} entries into a file")
    print(", ".join(f"{Path(f).stem} {n}" for f, n in result["entries_by_file"].items()))
    print(" -> ".join(Path(f).stem for f in result["order"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
