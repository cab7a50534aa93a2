"""The locust user classes against a real standalone server: every shape answers correctly under load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.run_load import run_step
from loadtest.shapes import USER_CLASSES
from tests.servers import standalone_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def url():
    with standalone_server() as base:
        yield base


@pytest.mark.parametrize("user_class", USER_CLASSES)
def test_user_class_runs_clean(url, user_class, tmp_path):
    step = run_step(url, user_class, users=2, seconds=2, workdir=tmp_path)
    assert step["requests"] > 0
    assert step["failures"] == 0


def test_checks_catch_wrong_answers(tmp_path):
    # A server of the wrong dimension must fail every check: the user classes look inside the answers.
    with standalone_server() as base:
        result = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless", "-u", "1",
             "-r", "1", "-t", "2s", "--host", base, "--csv", str(tmp_path / "x"), "--only-summary", "SingleText"],
            env={**__import__("os").environ, "SWIFTEMBED_DIM": "128"}, capture_output=True, text=True, timeout=60,
        )
    stats = (tmp_path / "x_stats.csv").read_text().splitlines()
    aggregated = next(line for line in stats if "Aggregated" in line).split(",")
    assert int(aggregated[2]) > 0 and int(aggregated[3]) == int(aggregated[2]), result.stderr[-500:]


def test_refuses_non_loopback_targets(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless", "-u", "1",
         "-t", "1s", "--host", "http://203.0.113.7:8000", "SingleText"],
        capture_output=True, text=True, timeout=60,
    )
    assert "127.0.0.1 only" in result.stderr + result.stdout
