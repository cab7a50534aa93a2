"""Schemathesis against /openapi.json on both servers: no 5xx, and every response as the spec says (issue 6).

A bounded pass (SWIFTEMBED_FUZZ_EXAMPLES cases per operation and phase, 25 by default, fixed seed
SWIFTEMBED_FUZZ_SEED) runs every check schemathesis has: not_a_server_error, status code / content type / header /
body conformance, schema-valid requests accepted, schema-violating ones refused, unsupported methods refused.
loadtest/fuzz_long.py (the same code) is the longer run: `python loadtest/fuzz_long.py --standalone --max-time 300`.
"""

from __future__ import annotations

import json
import os

import pytest

from loadtest import fuzz_long
from tests.servers import standalone_server

MAX_EXAMPLES = int(os.environ.get("SWIFTEMBED_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("SWIFTEMBED_FUZZ_SEED", "6"))


def check(result: fuzz_long.FuzzResult) -> None:
    summary = result.summary()
    print(f"\nFIGURES fuzz: {json.dumps(summary)}")
    assert result.report, result.output[-5000:]  # schemathesis ran and wrote its report
    assert result.returncode == 0, result.output[-12000:]
    assert summary["operations_tested"] == summary["operations_total"] >= 13, summary  # every route of the spec
    assert result.cases >= 11 * MAX_EXAMPLES, summary
    assert summary["phases"]["coverage"] == "success" and summary["phases"]["fuzzing"] == "success", summary


def test_fuzz_standalone():
    with standalone_server() as url:
        check(fuzz_long.run(url, max_examples=MAX_EXAMPLES, seed=SEED, timeout=240))


@pytest.mark.ray
def test_fuzz_through_serve(ray_serve):
    from tests.test_reliability import deployed

    with deployed(ray_serve.url, "fuzz") as server:
        check(fuzz_long.run(server.url, max_examples=MAX_EXAMPLES, seed=SEED, timeout=240))


def test_fuzz_hooks_serialize_jsonl(tmp_path):
    """The hooks the run loads: a JSON-lines body goes out as its own text, anything else as one JSON line."""
    assert fuzz_long.jsonl_body('{"text": "a"}\n') == b'{"text": "a"}\n'
    assert fuzz_long.jsonl_body({"text": "a", "n": 2**70}) == b'{"text": "a", "n": 1180591620717411303424}\n'
    assert fuzz_long.jsonl_body(None) is None
    config = fuzz_long.write_config(tmp_path).read_text()
    assert "413" in config and "/embed/jsonl" in config and str(fuzz_long.HERE) in config
