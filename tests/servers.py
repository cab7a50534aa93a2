"""Start real servers on 127.0.0.1 for tests: a subprocess each, stopped when the test module ends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


@contextmanager
def standalone_server(*args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`swiftembed serve --standalone` on a free loopback port; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "swiftembed.cli", "serve", "--standalone", "--host", "127.0.0.1", "--port", str(port),
         *args],
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process=process)
        yield url
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Terminate, and kill if it will not go."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def require_tool(name: str) -> str:
    """Path of a command-line tool; skip without it locally, fail in CI (where .ci/run installs it)."""
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        message = f"{name} not found (bash .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
