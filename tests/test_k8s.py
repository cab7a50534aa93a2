"""Static checks of the Kubernetes manifests in k8s/, without a cluster.

Standard kinds are validated against Kubernetes' OpenAPI schemas (kubernetes-validate, strict: unknown
fields fail); the custom kinds (RayService, PodMonitor, PrometheusRule) are checked field by field, with
the RayService pod templates validated as PodTemplates and its serveConfigV2 parsed by Ray's own schema.
`kubectl kustomize k8s/` must render.
"""

from __future__ import annotations

import ast
import copy
import re
import subprocess
import tomllib
import warnings
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.servers import require_tool

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
SERVE_CONFIG = ROOT / "deploy" / "serve-cluster.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "swiftembed.json"
CRD_GROUPS = ("ray.io/", "monitoring.coreos.com/")
# The oldest Kubernetes the manifests target, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
METRICS_PORT = 8080

# Importing Ray's Serve schema warns about Ray's own use of Pydantic; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")


def validate(doc: dict[str, Any], version: str) -> None:
    """kubernetes-validate in strict mode (unknown fields fail), with a one-line failure message."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(p) for p in error.absolute_path)
        pytest.fail(f"{doc['kind']} {doc['metadata']['name']} (Kubernetes {version}) at {where}: {error.message[:300]}")


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_documents() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in documents(path)]


def one(kind: str) -> dict[str, Any]:
    found = [doc for doc in all_documents() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def is_custom(doc: dict[str, Any]) -> bool:
    return doc["apiVersion"].startswith(CRD_GROUPS)


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ray_pin() -> str:
    """The exact Ray version pinned in pyproject.toml (ray[serve]==X)."""
    pins = [
        re.fullmatch(r"ray(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        for dep in pyproject()["project"]["dependencies"]
    ]
    versions = [m.group(2) for m in pins if m]
    assert len(versions) == 1, "pyproject.toml must pin ray exactly once (ray[serve]==X.Y.Z)"
    return versions[0]


def image_tag() -> str:
    """The tag k8s/Dockerfile's image must carry: <project version>-ray<ray version>."""
    return f"{pyproject()['project']['version']}-ray{ray_pin()}"


def cluster() -> dict[str, Any]:
    return one("RayService")["spec"]["rayClusterConfig"]


def groups() -> list[dict[str, Any]]:
    """Head group then worker groups."""
    return [cluster()["headGroupSpec"], *cluster()["workerGroupSpecs"]]


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    """KubeRay runs Ray in the first container of a pod template."""
    return group["template"]["spec"]["containers"][0]


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (4Gi, 512Mi, 500m, 2) as a number of bytes or cores."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match, value
    return float(match.group(1)) * units.get(match.group(2), 1) if match.group(2) else float(match.group(1))


def serve_config() -> dict[str, Any]:
    return yaml.safe_load(SERVE_CONFIG.read_text())


def serve_config_v2() -> dict[str, Any]:
    text = one("RayService")["spec"]["serveConfigV2"]
    assert isinstance(text, str), "serveConfigV2 is a YAML string, not a mapping"
    return yaml.safe_load(text)


def unknown_serve_fields(config: dict[str, Any]) -> list[str]:
    """Keys Ray's Serve schema does not define (it ignores them silently, so a typo would go unnoticed)."""
    from ray.serve.config import AutoscalingConfig, HTTPOptions
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeApplicationSchema, ServeDeploySchema

    def extra(obj: dict[str, Any], schema: Any, where: str) -> list[str]:
        return [f"{where}.{key}" for key in obj if key not in schema.model_fields]

    out = extra(config, ServeDeploySchema, "")
    out += extra(config.get("http_options") or {}, HTTPOptions, "http_options")
    for app in config.get("applications", []):
        out += extra(app, ServeApplicationSchema, app["name"])
        for dep in app.get("deployments", []):
            where = f"{app['name']}.{dep['name']}"
            out += extra(dep, DeploymentSchema, where)
            out += extra(dep.get("autoscaling_config") or {}, AutoscalingConfig, where + ".autoscaling_config")
            out += extra(dep.get("ray_actor_options") or {}, RayActorOptionsSchema, where + ".ray_actor_options")
    return out


def parse_serve_config(config: dict[str, Any]) -> Any:
    """Parse with Ray's ServeDeploySchema (import only: no Ray is started)."""
    from ray.serve.schema import ServeDeploySchema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Ray's own deprecation notes are not failures here
        return ServeDeploySchema.model_validate(config)


# --- files and kustomization ------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = {r for r in kustomization["resources"] if r.endswith(".yaml")}
    assert listed == {p.name for p in manifest_files()}
    for resource in kustomization["resources"]:
        assert (K8S / resource).exists(), resource
    assert kustomization["namespace"] == "swiftembed"


def test_every_manifest_has_kind_and_name():
    kinds = set()
    for doc in all_documents():
        assert doc.get("apiVersion") and doc.get("kind"), doc
        assert doc["metadata"]["name"], doc["kind"]
        kinds.add(doc["kind"])
    assert kinds == {"Namespace", "RayService", "Ingress", "Service", "PodMonitor", "PrometheusRule"}


# --- standard kinds: kubernetes-validate ------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_standard_kinds_validate(version):
    checked = 0
    for doc in all_documents():
        if not is_custom(doc):
            validate(doc, version)
            checked += 1
    assert checked >= 2


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_rayservice_pod_templates_validate(version):
    for group in groups():
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": group.get("groupName", "head")},
            "template": group["template"],
        }
        validate(pod_template, version)


def test_validation_catches_a_misspelt_field():
    ingress = copy.deepcopy(one("Ingress"))
    ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["prot"] = {"number": 8000}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ingress, K8S_VERSIONS[0], strict=True)


# --- RayService -------------------------------------------------------------------------------------------


def test_rayservice_required_fields():
    service = one("RayService")
    assert service["apiVersion"] == "ray.io/v1"
    spec = service["spec"]
    assert set(spec) >= {"serveConfigV2", "rayClusterConfig"}
    head = cluster()["headGroupSpec"]
    assert set(head) >= {"rayStartParams", "template"}
    assert cluster()["workerGroupSpecs"], "no worker group"
    for worker in cluster()["workerGroupSpecs"]:
        assert set(worker) >= {"groupName", "rayStartParams", "template", "minReplicas", "maxReplicas"}
    for group in groups():
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), "rayStartParams values are strings"
        assert group["template"]["spec"]["containers"], "no container"


def test_serve_config_v2_is_serve_cluster_yaml():
    assert serve_config_v2() == serve_config()


def test_serve_configs_parse_with_ray_schema():
    for config in (serve_config(), serve_config_v2()):
        schema = parse_serve_config(config)
        assert [app.name for app in schema.applications] == ["swiftembed"]
        app = schema.applications[0]
        assert app.import_path == "swiftembed.ray.deployment:build_app"
        assert app.route_prefix == "/"
        assert [d.name for d in app.deployments] == ["SwiftEmbed"]
        assert not unknown_serve_fields(config), unknown_serve_fields(config)


def test_unknown_serve_field_is_caught():
    config = copy.deepcopy(serve_config())
    config["applications"][0]["deployments"][0]["max_ongoin_requests"] = 8
    assert unknown_serve_fields(config) == ["swiftembed.SwiftEmbed.max_ongoin_requests"]


def test_ray_versions_agree_with_pyproject():
    version = ray_pin()
    assert cluster()["rayVersion"] == version
    for group in groups():
        for container in group["template"]["spec"]["containers"]:
            assert container["image"].rsplit(":", 1)[1] == image_tag(), (
                f"{container['name']}: image tag must be {image_tag()} (project version - ray version)"
            )
    dockerfile = (K8S / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert bases == [f"rayproject/ray:{version}-py311-cpu"]
    assert f"ray.__version__ == '{version}'" in dockerfile
    assert pyproject()["project"]["requires-python"] == ">=3.11", "the base image ships Python 3.11"


def test_head_takes_no_replicas_and_autoscaling_is_on():
    assert cluster()["enableInTreeAutoscaling"] is True
    assert cluster()["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_workers_fit_the_serve_autoscaling_bounds():
    deployment = serve_config()["applications"][0]["deployments"][0]
    needed = deployment["autoscaling_config"]["max_replicas"] * deployment["ray_actor_options"]["num_cpus"]
    offered = 0.0
    for worker in cluster()["workerGroupSpecs"]:
        assert 0 <= worker["minReplicas"] <= worker.get("replicas", worker["minReplicas"]) <= worker["maxReplicas"]
        resources = ray_container(worker)["resources"]
        assert set(resources) == {"requests", "limits"}, worker["groupName"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
        cpus = float(worker["rayStartParams"].get("num-cpus", quantity(resources["limits"]["cpu"])))
        assert cpus <= quantity(resources["limits"]["cpu"]), "Ray would promise more CPUs than the pod has"
        offered += worker["maxReplicas"] * cpus
    assert offered >= needed, f"workers offer {offered} CPUs at most, Serve may ask for {needed}"


def test_object_store_sits_in_a_memory_backed_dev_shm():
    for group in groups():
        spec = group["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in ray_container(group).get("volumeMounts", [])}
        assert "/dev/shm" in mounts, group.get("groupName", "head")
        volume = next(v for v in spec["volumes"] if v["name"] == mounts["/dev/shm"])
        assert volume["emptyDir"]["medium"] == "Memory"
        shm = quantity(volume["emptyDir"]["sizeLimit"])
        assert shm <= quantity(ray_container(group)["resources"]["limits"]["memory"])
        store = group["rayStartParams"].get("object-store-memory")
        assert store is not None and int(store) <= shm, "the object store must fit in /dev/shm"


def test_metrics_port_is_exported_and_scraped():
    monitor = one("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    endpoints = monitor["spec"]["podMetricsEndpoints"]
    assert endpoints and all(e.get("port") for e in endpoints)
    selector = monitor["spec"]["selector"]["matchLabels"]
    for group in groups():
        assert group["rayStartParams"]["metrics-export-port"] == str(METRICS_PORT)
        ports = {p["name"]: p["containerPort"] for p in ray_container(group)["ports"]}
        for endpoint in endpoints:
            assert ports.get(endpoint["port"]) == METRICS_PORT, group.get("groupName", "head")
        labels = group["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), "the PodMonitor selector must match head and worker pods"


def test_latency_buckets_are_sub_millisecond_and_keep_the_alert_threshold():
    rules = (ROOT / "deploy" / "alerts" / "rules.yaml").read_text()
    threshold = float(re.search(r"\)\s*>\s*([0-9.]+)\s*\n\s*and", rules).group(1))
    for group in groups():
        env = {e["name"]: e.get("value") for e in ray_container(group).get("env", [])}
        buckets = [float(b) for b in env["RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS"].split(",")]
        assert buckets == sorted(set(buckets)) and buckets[0] > 0 and buckets[0] < 1
        assert threshold in buckets, "the p99 alert threshold should be a bucket boundary"


def test_latency_buckets_match_the_local_serve_environment():
    """k8s and a local `serve_environment()` run should bucket latencies alike (read without importing Ray)."""
    source = ROOT / "swiftembed" / "ray" / "ingress.py"
    constants = {
        node.targets[0].id: node.value.value
        for node in ast.parse(source.read_text()).body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
    }
    assert "SERVE_LATENCY_BUCKETS_MS" in constants, "swiftembed/ray/ingress.py defines no SERVE_LATENCY_BUCKETS_MS"
    for group in groups():
        env = {e["name"]: e.get("value") for e in ray_container(group).get("env", [])}
        assert env["RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS"] == constants["SERVE_LATENCY_BUCKETS_MS"]


def test_every_pod_starts_ray_with_the_replica_ingress():
    """The RayService runs what `swiftembed serve` runs: swiftembed.ray.ingress.serve_environment("replica") in every
    pod, Ray's proxy off, and each replica on the pods' `serve` port, the one KubeRay's readiness probe asks."""
    from swiftembed.ray.ingress import serve_environment

    local = serve_environment("replica")
    keys = ("RAY_SERVE_ENABLE_DIRECT_INGRESS", "RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_worker_niceness",
            "RAY_SERVE_REQUEST_LATENCY_BUCKETS_MS")
    for group in groups():
        env = {e["name"]: e.get("value") for e in ray_container(group).get("env", [])}
        assert {k: env.get(k) for k in keys} == {k: local[k] for k in keys}, group.get("groupName", "head")
        assert "RAY_SERVE_ENABLE_HA_PROXY" not in env
        ports = {p["name"]: p["containerPort"] for p in ray_container(group)["ports"]}
        assert ports["serve"] == serve_config()["applications"][0]["args"]["http_port"]
    config = serve_config()
    assert config["proxy_location"] == "Disabled"
    args, deployment = config["applications"][0]["args"], config["applications"][0]["deployments"][0]
    assert args["http_host"] == "0.0.0.0"
    # The last replica of a pod must outlast one readiness-probe period (5 s) plus endpoint propagation, and
    # Serve must let it: the drain and the requests in flight fit the graceful shutdown.
    assert 7 <= args["http_drain_s"] <= deployment["graceful_shutdown_timeout_s"] - 10
    dockerfile = (ROOT / "k8s" / "Dockerfile").read_text()
    assert "haproxy_missing() is None" in dockerfile, "the image must still be able to run the HAProxy ingress"


# --- Ingress, PodMonitor, PrometheusRule ------------------------------------------------------------------


def test_ingress_routes_to_the_serve_service():
    ingress = one("Ingress")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    backends = [p["backend"]["service"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert backends
    for backend in backends:
        assert backend["name"] == f"{one('RayService')['metadata']['name']}-serve-svc"
        assert backend["port"]["number"] == serve_config()["applications"][0]["args"]["http_port"] == 8000


def test_grpc_service_reaches_every_worker_pods_grpc_port():
    """TEI's gRPC API: every replica listens on serveConfigV2's grpc_port, each worker pod names that port `grpc`,
    and the Service (KubeRay's serve Service carries only `serve`) selects the worker pods KubeRay serves from."""
    service = one("Service")
    args = serve_config()["applications"][0]["args"]
    (port,) = service["spec"]["ports"]
    assert port == {"name": "grpc", "port": args["grpc_port"], "targetPort": "grpc", "appProtocol": "grpc"}
    assert args["grpc_port"] != args["http_port"]
    selector = service["spec"]["selector"]
    assert selector["ray.io/serve"] == "true"  # KubeRay's own serve Service selects on it too
    workers = cluster()["workerGroupSpecs"]
    for group in workers:
        labels = group["template"]["metadata"]["labels"]
        assert {k: v for k, v in selector.items() if k != "ray.io/serve"}.items() <= labels.items()
        ports = {p["name"]: p["containerPort"] for p in ray_container(group)["ports"]}
        assert ports["grpc"] == args["grpc_port"]
    head_labels = cluster()["headGroupSpec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= {**head_labels, "ray.io/serve": "true"}.items(), "the head has no replicas"
    assert cluster()["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_prometheus_rule_required_fields():
    rule = one("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"]
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for item in group["rules"]:
            assert item["expr"] and (item.get("alert") or item.get("record"))


# --- kustomize --------------------------------------------------------------------------------------------


def rendered() -> list[dict[str, Any]]:
    result = subprocess.run([require_tool("kubectl"), "kustomize", str(K8S)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_kustomize_renders_everything_into_one_namespace():
    docs = rendered()
    assert sorted(d["kind"] for d in docs) == sorted(
        ["Namespace", "RayService", "Ingress", "Service", "PodMonitor", "PrometheusRule", "ConfigMap"]
    )
    for doc in docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "swiftembed"
        else:
            assert doc["metadata"]["namespace"] == "swiftembed", doc["kind"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "swiftembed"
        if not is_custom(doc):
            validate(doc, K8S_VERSIONS[-1])


def test_dashboard_configmap_is_the_dashboard_file():
    (configmap,) = [d for d in rendered() if d["kind"] == "ConfigMap"]
    assert configmap["metadata"]["name"] == "swiftembed-grafana-dashboard", "no hash suffix: a stable name"
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"] == {"swiftembed.json": DASHBOARD.read_text()}


def test_ray_token_authentication_is_on_and_no_token_is_written():
    """Ray 2.60's head starts with token authentication; every pod must join with the same token, which KubeRay's
    authOptions provide from a Secret it makes. A token value in a manifest would be a leaked secret."""
    assert cluster()["authOptions"] == {"mode": "token"}
    for group in groups():
        env = {e["name"]: e for e in ray_container(group).get("env", [])}
        assert "RAY_AUTH_TOKEN" not in env or "value" not in env["RAY_AUTH_TOKEN"]


def test_batch_settings_in_every_config_are_the_settings_defaults():
    """Batch size and wait have one default (swiftembed/service/settings.py); the Serve configs and the RayService
    spell it out as `user_config` (so it can be changed live) and must agree with it."""
    from swiftembed.service.settings import Settings

    configs = {path.name: yaml.safe_load(path.read_text()) for path in (ROOT / "deploy").glob("serve-*.yaml")}
    configs["rayservice.yaml"] = serve_config_v2()
    checked = 0
    for name, config in configs.items():
        for application in config["applications"]:
            for deployment in application.get("deployments", []):
                if "user_config" in deployment:
                    assert deployment["user_config"] == Settings().batch(), (name, deployment["name"])
                    checked += 1
    assert checked >= 3, configs.keys()
