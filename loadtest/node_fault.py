"""A worker node dies under load: a two-node Ray cluster on this machine, SwiftEmbed on both, the worker removed.

    python loadtest/node_fault.py [--json out.json] [--load-s 4] [--after-s 60]

Starts its own Ray (`ray.cluster_utils.Cluster`: a head with 2 CPUs and a worker node with 1, both on this
machine, Ray's files under a private RAY_TMPDIR so no other Ray on the machine sees this one), Serve's proxy on the
head only, listening on 127.0.0.1 (all HTTP load goes there), and two SwiftEmbed replicas of 1 CPU each, one per
node. (Ray's own control traffic uses the machine's address, as any local Ray does.) A load of
concurrent clients runs throughout (`RetryingLoad`): each request is retried on a 5xx or a broken connection
(embedding is idempotent), so "lost" counts requests that never got their right answer. After `--load-s` seconds
the worker node is killed (`Cluster.remove_node(allow_graceful=False)`: its raylet, object store and the replica
on it die at once). Measured: failed attempts by kind and when they happen, the longest pause between two
answers, when the cluster marks the node dead, and when Serve runs two healthy replicas again (on the head).
Prints one JSON document; exit status 0 when nothing was lost and Serve recovered.

tests/test_faults.py runs this (in CI too) and uses `RetryingLoad` for its replica-kill test;
docs/reliability.md records the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class RetryingLoad:
    """`concurrency` clients in a background thread posting one text each to /embed, until stopped.

    A request is retried (up to 40 times; the first retry after 0.5 s, as the openai client does, then backoff
    doubling to 1 s) on a 5xx or a transport error; a 4xx is an answer and never retried. Every attempt is recorded
    with its time and outcome (status or exception name), and per request the attempts it took.
    """

    def __init__(self, url: str, *, concurrency: int = 4, texts_per_request: int = 1, max_requests: int = 200_000,
                 nice: int = 0, raw: bool = False, words: int = 0):
        """`nice`: the load thread's niceness. Clients of a real service run on other machines; on a test machine
        they share the service's cores, and a positive value keeps them from taking the CPU the service needs
        (for example to start a replacement replica). `raw`: ask for raw float32 answers (cheap for the client to
        read, so that the service, not the client, is the limit); `words`: that many more words in each text,
        accented, so that the server tokenizes them with the tokenizer itself, not its ASCII fast path's cache."""
        self.url, self.concurrency, self.per_request, self.nice = url, concurrency, texts_per_request, nice
        self.raw, self.words = raw, words
        self.max_requests = max_requests
        self.attempts: list[tuple[float, str]] = []
        self.results: dict[int, object] = {}  # request index -> embeddings (None until answered)
        self.tries: dict[int, int] = {}  # request index -> attempts made
        self._stop = threading.Event()
        self._next = iter(range(max_requests))
        self._thread = threading.Thread(target=self._main, daemon=True)

    def texts(self, i: int) -> list[str]:
        tail = " naïve café déjà vu über" * (self.words // 5)
        return [f"fault request {i} text {j} about topic {(i + j) % 13}{tail}" for j in range(self.per_request)]

    def start(self) -> RetryingLoad:
        self._thread.start()
        return self

    def _main(self) -> None:
        if self.nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)  # this thread only (Linux)
        asyncio.run(self._run())

    def stop(self, timeout: float = 90.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    async def _run(self) -> None:
        import httpx
        import numpy as np

        headers = {"Accept": "application/octet-stream"} if self.raw else {}
        async with httpx.AsyncClient(base_url=self.url, timeout=30, headers=headers) as http:

            async def client() -> None:
                while not self._stop.is_set():
                    i = next(self._next, None)
                    if i is None:
                        return
                    self.results[i] = None
                    for attempt in range(40):
                        self.tries[i] = attempt + 1
                        try:
                            r = await http.post("/embed", json={"texts": self.texts(i)})
                            outcome = str(r.status_code)
                        except httpx.HTTPError as exc:
                            r, outcome = None, type(exc).__name__
                        self.attempts.append((time.monotonic(), outcome))
                        if r is not None and r.status_code == 200:
                            self.results[i] = (np.frombuffer(r.content, "<f4").reshape(self.per_request, -1)
                                               if self.raw else r.json()["embeddings"])
                            break
                        if r is not None and r.status_code < 500:
                            break
                        await asyncio.sleep(0.5 if attempt == 0 else min(1.0, 0.05 * 2**attempt))

            await asyncio.gather(*[client() for _ in range(self.concurrency)])

    def figures(self, t0: float, embedder) -> dict:
        """Counts, and times relative to `t0` (the fault): failed attempts, the longest pause between answers."""
        import numpy as np

        outcomes = Counter(o for _, o in self.attempts)
        failed = [t - t0 for t, o in self.attempts if o != "200"]
        answered = sorted(t for t, o in self.attempts if o == "200")
        after = [t for t in answered if t >= t0]
        before = [t for t in answered if t < t0]
        gaps = np.diff(([before[-1]] if before else []) + after)
        done = {i: v for i, v in self.results.items() if v is not None}
        wrong = 0
        if done:
            ids = sorted(done)
            got = np.array([row for i in ids for row in done[i]])
            want = embedder.encode([t for i in ids for t in self.texts(i)])
            wrong = int(np.sum(~np.all(np.isclose(got, want, atol=1e-6), axis=1)))
        return {
            "requests": len(self.results),
            "attempts": len(self.attempts),
            "attempt_outcomes": dict(outcomes),
            "failed_attempts": len(failed),
            "failed_from_to_s": [round(min(failed), 2), round(max(failed), 2)] if failed else None,
            "longest_pause_between_answers_s": round(float(gaps.max()), 3) if len(gaps) else None,
            "answers_after_fault": len(after),
            "wrong_vectors": wrong,
            "lost": len(self.results) - len(done) + wrong,
            # What a client that retries once (the openai client's way) would have seen fail.
            "failed_with_one_retry": sum(1 for i, n in self.tries.items() if n > 2 or (n == 2 and i not in done)),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--load-s", type=float, default=4.0, help="seconds of load before the node is removed")
    parser.add_argument("--after-s", type=float, default=60.0, help="at most this long after removal")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--texts-per-request", type=int, default=16)
    parser.add_argument("--budget-s", type=float, default=300.0, help="hard stop: the whole run ends by then")
    args = parser.parse_args(argv)

    def watchdog() -> None:  # bounded whatever happens; Cluster's reaper stops its Ray processes when we exit
        time.sleep(args.budget_s)
        print(f"node_fault: over its {args.budget_s:.0f} s budget, exiting", file=sys.stderr, flush=True)
        os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()

    # A private Ray: its own temp dir, so its `ray_current_cluster` file never points anyone else's ray.init here.
    tmp = tempfile.mkdtemp(prefix="sen", dir="/tmp")
    os.environ["RAY_TMPDIR"] = tmp
    os.environ.pop("RAY_ADDRESS", None)
    sys.path.insert(0, str(ROOT))
    try:
        figures = run(args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if figures["lost"] == 0 and figures["replicas_running_again_s"] is not None else 1


def run(args: argparse.Namespace) -> dict:
    import psutil
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from swiftembed import Embedder
    from swiftembed.ray.deployment import DEPLOYMENT_NAME, NAMESPACE, SwiftEmbedDeployment
    from swiftembed.ray.ingress import serve_environment
    from tests.servers import free_port

    # Ray's proxy: two "nodes" on one host would each start an HAProxy on the same port.
    os.environ.update(serve_environment("proxy"))
    loopback = "127.0.0.1"
    started = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    figures: dict = {"machine": f"{os.cpu_count()} cores", "nodes": "head 2 CPUs + worker 1 CPU, one machine",
                     "load": f"{args.concurrency} clients, {args.texts_per_request} texts per request, retrying"}
    try:
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": loopback, "port": port})
        serve.run(SwiftEmbedDeployment.options(num_replicas=2, ray_actor_options={"num_cpus": 1}).bind(),
                  name="nf", route_prefix="/")
        handle = serve.get_app_handle("nf")

        worker_raylet = worker.all_processes["raylet"][0].process.pid
        where: dict[int, str] = {}
        deadline = time.monotonic() + 60
        while len(where) < 2 and time.monotonic() < deadline:
            pid = handle.info.remote().result()["pid"]
            if pid not in where:
                on_worker = any(p.pid == worker_raylet for p in psutil.Process(pid).parents())
                where[pid] = "worker" if on_worker else "head"
        figures["replicas_before"] = sorted(where.values())
        figures["setup_s"] = round(time.monotonic() - started, 1)

        load = RetryingLoad(f"http://{loopback}:{port}", concurrency=args.concurrency,
                            texts_per_request=args.texts_per_request).start()
        time.sleep(args.load_s)

        removed = time.monotonic()
        cluster.remove_node(worker, allow_graceful=False)
        node_dead_s = running_again_s = None
        degraded = False
        states_seen: list = []
        while time.monotonic() - removed < args.after_s:
            now = time.monotonic() - removed
            if node_dead_s is None and sum(1 for n in ray.nodes() if n["Alive"]) == 1:
                node_dead_s = now
            try:
                status = serve.status().applications["nf"].deployments[DEPLOYMENT_NAME]
                states = {getattr(k, "value", str(k)): v for k, v in status.replica_states.items()}
            except Exception as exc:  # the controller may be busy; ask again
                states = {"error": type(exc).__name__}
            if not states_seen or states_seen[-1][1] != states:
                states_seen.append((round(now, 2), states))
            degraded = degraded or states != {"RUNNING": 2}
            if degraded and states == {"RUNNING": 2} and running_again_s is None:
                running_again_s = now
            if running_again_s is not None and node_dead_s is not None and now > max(running_again_s, node_dead_s) + 3:
                break
            time.sleep(0.25)
        load.stop()

        pids_after = {handle.info.remote().result()["pid"] for _ in range(50)}
        figures.update(load.figures(removed, Embedder.load()))
        figures.update({
            "node_marked_dead_s": None if node_dead_s is None else round(node_dead_s, 2),
            "replicas_running_again_s": None if running_again_s is None else round(running_again_s, 2),
            "replica_states_after_removal": states_seen,
            "replicas_after": sorted(f"{where[p]} (old)" if p in where else "new" for p in pids_after),
        })
        return figures
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
