"""The replica ingress's server on its own (no Ray): KubeRay's probe paths, and the drain of the last replica on
a port, with real uvicorn servers on 127.0.0.1 sharing a port as replicas do."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from swiftembed.ray.ingress import DRAIN_MARKERS, ReplicaServer, draining_on, listeners
from tests.servers import free_port


async def hello(scope, receive, send) -> None:
    """The app behind the server: answers every request with 200 and its path."""
    body = scope["path"].encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def started(port: int, **kwargs) -> ReplicaServer:
    server = ReplicaServer(hello, "127.0.0.1", port, **kwargs)
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                await client.get(f"http://127.0.0.1:{port}/health")
                return server
            except httpx.ConnectError:
                await asyncio.sleep(0.02)
    raise AssertionError("the server did not start")


def test_probe_paths_answer_as_serves_proxy_and_the_rest_reaches_the_app():
    async def main() -> None:
        port = free_port()
        server = await started(port, routes={"/": "embed-app"})
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = await client.get("/-/healthz")
            assert (health.status_code, health.text) == (200, "success")
            assert (await client.get("/-/routes")).json() == {"/": "embed-app"}
            assert (await client.post("/embed")).text == "/embed"
            assert (await client.get("/-/other")).text == "/-/other"
        assert listeners(port) == 1
        await server.stop()

    asyncio.run(main())


def test_the_last_replica_on_a_port_drains_before_it_closes():
    """While it drains it serves every request but fails /-/healthz (a readiness probe takes the pod out), then the
    port closes."""

    async def main() -> None:
        port = free_port()
        server = await started(port, drain_s=1.5)
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url) as client:
            begun = time.monotonic()
            stopping = asyncio.create_task(server.stop())
            await asyncio.sleep(0.3)
            health = await client.get("/-/healthz")
            assert (health.status_code, health.text) == (503, "draining")
            assert (await client.post("/embed")).status_code == 200
            await stopping
            assert time.monotonic() - begun >= 1.5
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as fresh:
                await fresh.get(f"{url}/-/healthz")

    asyncio.run(main())


def test_a_replica_that_shares_its_port_stops_without_draining():
    """Another replica on the node keeps the port (and the pod's readiness): no reason to wait."""

    async def main() -> None:
        port = free_port()
        leaving = await started(port, drain_s=30)
        staying = await started(port)
        assert listeners(port) == 2
        begun = time.monotonic()
        await leaving.stop()
        assert time.monotonic() - begun < 5
        assert listeners(port) == 1
        async with httpx.AsyncClient() as client:
            for _ in range(5):  # every new connection reaches the replica that stays
                assert (await client.get(f"http://127.0.0.1:{port}/-/healthz")).text == "success"
        await staying.stop()

    asyncio.run(main())


def test_replicas_that_stop_together_leave_one_draining():
    """Two replicas of a pod stopping at once (a downscale by two, a new config). Each marks itself draining before
    it looks for others, so the second to look cannot take the first for one that stays: at least one drains,
    and the port does not close before the probe has failed. (Counting listeners alone, both left at once.)"""

    async def main() -> None:
        port = free_port()
        first, second = await started(port, drain_s=1.5), await started(port, drain_s=1.5)
        url = f"http://127.0.0.1:{port}"
        begun = time.monotonic()
        stopping = [asyncio.create_task(first.stop()), asyncio.create_task(second.stop())]
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient(base_url=url) as client:
            for _ in range(4):  # each a new connection, to whichever replica still listens
                health = await client.get("/-/healthz", headers={"Connection": "close"})
                assert (health.status_code, health.text) == (503, "draining")
                assert (await client.post("/embed", headers={"Connection": "close"})).status_code == 200
                await asyncio.sleep(0.2)
        await asyncio.gather(*stopping)
        assert time.monotonic() - begun >= 1.5
        assert listeners(port) == 0
        assert not list((DRAIN_MARKERS / str(port)).iterdir())

    asyncio.run(main())


def test_a_marker_left_by_a_dead_replica_is_not_counted():
    """A replica killed while draining leaves its marker: a process that no longer exists does not count."""
    port = free_port()
    folder = DRAIN_MARKERS / str(port)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "999999999-1").touch()  # no such process (pid_max is at most 2**22)
    assert draining_on(port) == 0
    assert not (folder / "999999999-1").exists()


def test_an_idle_keep_alive_connection_gets_its_next_request_answered_while_the_server_closes():
    """A client whose keep-alive connection is idle when the replica stops, sending its next request a moment
    later, gets an answer saying `Connection: close`, not a cut connection (uvicorn's own shutdown cuts idle
    connections at once: over a rolling update under load, one request in ~42,000 got no answer)."""

    async def main() -> None:
        port = free_port()
        server = await started(port, close_grace_s=1.0)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"POST /embed HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"

        async def answer() -> bytes:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            return head.lower()

        writer.write(request)
        first = await answer()
        assert first.startswith(b"http/1.1 200") and b"connection: close" not in first
        stopping = asyncio.create_task(server.stop())
        await asyncio.sleep(0.3)  # the port is closed by now; this connection is idle
        assert listeners(port) == 0
        writer.write(request)
        second = await answer()
        assert second.startswith(b"http/1.1 200") and b"connection: close" in second
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then the server closes it
        writer.close()
        await stopping

    asyncio.run(main())
