"""Schemathesis against a running SwiftEmbed: every check on every route of its own /openapi.json.

What must hold: no 5xx, every response (status, content type, headers, body) as the spec says, schema-valid
requests accepted and schema-violating ones refused with a 4xx (413 counts: it is the documented answer to a
list over `maxItems`).

    python loadtest/fuzz_long.py --standalone --max-time 300        # starts its own standalone server
    python loadtest/fuzz_long.py --serve --max-time 300             # starts its own local Ray Serve
    python loadtest/fuzz_long.py --url http://127.0.0.1:8000 --max-examples 200

`--max-time` runs the fuzzing phase again and again until the budget is spent; `--max-examples` alone makes one
bounded pass (tests/test_fuzz.py uses that). A summary is printed as JSON and the exit status is non-zero on any
failure. The same file is the schemathesis hooks module (it registers a serializer for `application/jsonl`
bodies); `run` points schemathesis at it through the config file it writes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import schemathesis

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
# Statuses that count as "refused" for a request that breaks the schema: the defaults plus 413 (over a limit).
NEGATIVE_STATUSES = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]


def jsonl_body(value: Any) -> bytes | None:
    """The spec types the JSONL body as a string; anything else generated for it goes out as one JSON line."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n"  # any int size


schemathesis.serializer("application/jsonl")(lambda ctx, value: jsonl_body(value))


class FuzzResult:
    """One run: exit status, wall time, schemathesis' JSON report and its console output.

    (A plain class: this file is also loaded as a hooks module outside sys.modules, where @dataclass fails.)
    """

    def __init__(self, url: str, returncode: int, seconds: float, report: dict[str, Any], output: str) -> None:
        self.url, self.returncode, self.seconds, self.report, self.output = url, returncode, seconds, report, output

    @property
    def cases(self) -> int:
        return int(self.report.get("test_cases", {}).get("generated", 0))

    def summary(self) -> dict[str, Any]:
        r = self.report
        return {
            "url": self.url,
            "returncode": self.returncode,
            "seconds": round(self.seconds, 1),
            "operations_tested": r.get("operations", {}).get("tested"),
            "operations_total": r.get("operations", {}).get("total"),
            "cases": self.cases,
            "cases_with_failures": r.get("test_cases", {}).get("with_failures"),
            "failures": [(f.get("code"), f.get("title"), f.get("count")) for f in r.get("failures", [])],
            "errors": [(e.get("title"), e.get("count")) for e in r.get("errors", [])],
            "phases": {name: p.get("status") for name, p in r.get("phases", {}).items()},
            "seed": r.get("seed"),
        }


def write_config(directory: Path) -> Path:
    path = directory / "schemathesis.toml"
    path.write_text(
        f'hooks = "{HERE}"\n\n'
        "[checks.negative_data_rejection]\n"
        f"expected-statuses = {json.dumps(NEGATIVE_STATUSES)}\n\n"
        # /embed/jsonl answers a malformed line with an error line inside its 200 stream (documented): a body
        # that is "not a string" is just such a line, so the negative-data check does not apply there.
        "[[operations]]\n"
        'include-path = "/embed/jsonl"\n'
        "checks.negative_data_rejection.enabled = false\n\n"
        # JSON Schema cannot say overlap_tokens < chunk_tokens: a request the schema allows may break that (422).
        "[[operations]]\n"
        'include-path = "/embed/chunks"\n'
        "checks.positive_data_acceptance.enabled = false\n"
    )
    return path


def run(
    url: str,
    *,
    max_examples: int | None = None,
    max_time: int | None = None,
    seed: int | None = None,
    workers: int = 1,
    timeout: float = 600.0,
    headers: dict[str, str] | None = None,
) -> FuzzResult:
    """One `st run` against `url` (the service's base URL), every check, its JSON report read back."""
    with tempfile.TemporaryDirectory(prefix="swiftembed-fuzz-") as tmp:
        directory = Path(tmp)
        config = write_config(directory)
        command = [
            str(Path(sys.executable).with_name("st")), "--config-file", str(config), "--no-color",
            "run", f"{url}/openapi.json", "--url", url, "--workers", str(workers),
            "--request-timeout", "30", "--report", "json", "--report-json-path", str(directory / "report.json"),
            "--generation-database", "none", "--warnings", "off",
        ]
        if max_examples is not None:
            command += ["--max-examples", str(max_examples)]
        if max_time is not None:
            command += ["--max-time", str(max_time)]
        if seed is not None:
            command += ["--seed", str(seed)]
        for name, value in (headers or {}).items():
            command += ["--header", f"{name}: {value}"]
        start = time.monotonic()
        done = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "NO_COLOR": "1"})
        seconds = time.monotonic() - start
        report_path = directory / "report.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
    return FuzzResult(url, done.returncode, seconds, report, done.stdout + done.stderr)


@contextmanager
def _standalone():
    sys.path.insert(0, str(ROOT))
    from tests.servers import standalone_server

    with standalone_server() as url:
        yield url


@contextmanager
def _serve():
    sys.path.insert(0, str(ROOT))
    import ray
    from ray import serve

    from swiftembed.ray.deployment import NAMESPACE, SwiftEmbedDeployment
    from swiftembed.ray.ingress import serve_environment
    from tests.servers import free_port

    port = free_port()
    os.environ.update(serve_environment("haproxy", port))
    ray.init(num_cpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(SwiftEmbedDeployment.options(ray_actor_options={"num_cpus": 0.5}).bind(), name="fuzz",
                  route_prefix="/fuzz")
        yield f"http://127.0.0.1:{port}/fuzz"
    finally:
        serve.shutdown()
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="base URL of a running SwiftEmbed (loopback only)")
    where.add_argument("--standalone", action="store_true", help="start a standalone server on 127.0.0.1")
    where.add_argument("--serve", action="store_true", help="start a local Ray Serve on 127.0.0.1")
    parser.add_argument("--max-examples", type=int, help="cases per operation and phase")
    parser.add_argument("--max-time", type=int, help="seconds; fuzzing repeats until spent")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--api-key", help="send Authorization: Bearer KEY")
    parser.add_argument("--output", type=Path, help="also write the summary JSON here")
    args = parser.parse_args(argv)
    if args.max_examples is None and args.max_time is None:
        parser.error("give --max-examples and/or --max-time: the run must be bounded")
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("fuzz only services on this machine's loopback")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else None
    budget = (args.max_time or 0) + 600

    def fuzz(url: str) -> FuzzResult:
        return run(url, max_examples=args.max_examples, max_time=args.max_time, seed=args.seed, headers=headers,
                   timeout=budget)

    if args.url:
        result = fuzz(args.url.rstrip("/"))
    else:
        with _standalone() if args.standalone else _serve() as url:
            result = fuzz(url)
    summary = result.summary()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    if result.returncode != 0:
        print(result.output[-20000:], file=sys.stderr)
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
