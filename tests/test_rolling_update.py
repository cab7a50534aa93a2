"""New Serve configs under steady load (as `serve deploy` applies them): adding and removing a model, changing only
`user_config`, and changing the replica count each lose no request, and the new config is what answers after.

The deployment's `max_surge_percent` starts each replacement replica before the old one stops; the FIGURES line's
slowest request shows the difference (measured: 0.11 s with it, 1.89 s without: requests held while no replica
was up)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest

from tests.servers import free_port

pytestmark = pytest.mark.ray

APP = "rolling"
DEFAULT, SECOND = "potion-base-8M", "swiftembed-potion-sts-8M"


class SteadyLoad:
    """Threads posting embeddings for one model back to back; every status is counted."""

    def __init__(self, url: str, model: str, threads: int = 2) -> None:
        self.url, self.model = url, model
        self.statuses: Counter[int | str] = Counter()
        self.slowest = 0.0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def run(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            n = 0
            while not self.stop.is_set():
                try:
                    start = time.perf_counter()
                    r = http.post("/v1/embeddings", json={"model": self.model, "input": f"load {index} {n}"})
                    self.statuses[r.status_code] += 1
                    self.slowest = max(self.slowest, time.perf_counter() - start)
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                n += 1

    def __enter__(self) -> SteadyLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


@pytest.mark.parametrize("ingress", ["replica", "haproxy"])
def test_models_user_config_and_replicas_change_under_load_without_a_failed_request(ray_serve, embedders, ingress):
    """Both ingresses: through HAProxy, and with each replica answering on a shared port itself (`http_port`)."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    client = _get_global_client()
    port = free_port()
    url = f"http://127.0.0.1:{port}" if ingress == "replica" else f"{ray_serve.url}/{APP}"
    http = {"http_port": port, "http_host": "127.0.0.1"} if ingress == "replica" else {}

    def deploy(models: list[str], *, replicas: int = 1, batch: int = 64) -> None:
        application = {
            "name": APP, "route_prefix": f"/{APP}", "import_path": "swiftembed.ray.deployment:build_app",
            "args": {"models": models, **http},
            "deployments": [{"name": "SwiftEmbed", "num_replicas": replicas,
                             "ray_actor_options": {"num_cpus": 0.25},
                             "user_config": {"max_batch_size": batch, "batch_wait_timeout_s": 0.0}}],
        }
        client.deploy_apps(ServeDeploySchema.model_validate({"applications": [application]}), _blocking=True)

    def served() -> list[str]:
        r = httpx.get(f"{url}/v1/models", timeout=10)
        return [m["name"] for m in r.json()["data"]] if r.status_code == 200 else []

    def wait_for(check, what: str, timeout: float = 120) -> float:
        start = time.monotonic()
        while not check():
            assert time.monotonic() - start < timeout, f"no {what} after {timeout} s"
            time.sleep(0.2)
        return time.monotonic() - start

    deploy([DEFAULT])
    wait_for(lambda: served() == [DEFAULT], "first config")
    try:
        with SteadyLoad(url, DEFAULT) as load:
            time.sleep(2)
            deploy([DEFAULT, SECOND])  # a model added: every replica restarts with both
            added = wait_for(lambda: served() == [DEFAULT, SECOND], "added model")
            r = httpx.post(f"{url}/v1/embeddings", json={"model": SECOND, "input": "now served"}, timeout=30)
            np.testing.assert_allclose(r.json()["data"][0]["embedding"], embedders[SECOND].encode("now served"),
                                       atol=1e-6)
            deploy([DEFAULT, SECOND], batch=8)  # only user_config: reconfigured in place
            time.sleep(2)
            deploy([DEFAULT, SECOND], replicas=2, batch=8)  # more replicas, then fewer
            handle = serve.get_app_handle(APP)
            wait_for(lambda: len({handle.info.remote().result()["pid"] for _ in range(20)}) == 2, "two replicas")
            time.sleep(2)
            deploy([DEFAULT, SECOND], replicas=1, batch=8)
            time.sleep(3)
            deploy([DEFAULT])  # the model removed
            removed = wait_for(lambda: served() == [DEFAULT], "removed model")
            missing = httpx.post(f"{url}/v1/embeddings", json={"model": SECOND, "input": "gone"}, timeout=30)
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
            time.sleep(2)
        print(f"\nFIGURES rolling ({ingress} ingress): statuses {dict(load.statuses)}, slowest {load.slowest:.2f} s, "
              f"model added in {added:.1f} s, removed in {removed:.1f} s")
        assert load.statuses[200] > 100, load.statuses
        assert set(load.statuses) == {200}, load.statuses
    finally:
        client.delete_apps([APP], blocking=True)
