"""`swiftembed encode` and `info`, run as the installed console script would run."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from swiftembed.cli import main


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swiftembed.cli", *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def test_encode_arguments_to_jsonl_stdout(embedder, capsys):
    assert main(["encode", "hello world", "a second text"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["line"] for line in lines] == [1, 2]
    np.testing.assert_allclose([line["embedding"] for line in lines], embedder.encode(["hello world", "a second text"]))


def test_encode_stdin_lines():
    result = run_cli("encode", "--dimensions", "8", stdin="first\nsecond\n\nfourth\n")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 4 and all(len(row["embedding"]) == 8 for row in rows)


def test_encode_text_file_to_npy(tmp_path, embedder, sentences, capsys):
    texts = sentences[:1000]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out.npy"
    assert main(["encode", "-i", str(source), "-o", str(out), "--chunk-size", "128", "--no-progress"]) == 0
    np.testing.assert_array_equal(np.load(out), embedder.encode(texts))


def test_encode_jsonl_file_with_field_and_skip(tmp_path, embedder):
    source = tmp_path / "in.jsonl"
    source.write_text('{"body": "one"}\n{"body": "two"}\nnot json\n{"other": 1}\n\n{"body": "three"}\n')
    out = tmp_path / "out.npy"
    fail = run_cli("encode", "-i", str(source), "--field", "body", "-o", str(out))
    assert fail.returncode == 2 and "in.jsonl:3: invalid JSON" in fail.stderr
    ok = run_cli("encode", "-i", str(source), "--field", "body", "-o", str(out), "--on-error", "skip")
    assert ok.returncode == 0, ok.stderr
    assert "in.jsonl:3" in ok.stderr and "in.jsonl:4" in ok.stderr
    np.testing.assert_array_equal(np.load(out), embedder.encode(["one", "two", "three"]))


def test_encode_to_jsonl_file_quantized(tmp_path, embedder, capsys):
    out = tmp_path / "out.jsonl"
    assert main(["encode", "x", "y", "-o", str(out), "--precision", "ubinary"]) == 0
    rows = [json.loads(line)["embedding"] for line in out.read_text().splitlines()]
    np.testing.assert_array_equal(rows, embedder.encode(["x", "y"], precision="ubinary"))


def test_encode_bad_options(capsys):
    assert main(["encode", "x", "--dimensions", "999"]) == 2
    assert "dimensions must be between 1 and 256" in capsys.readouterr().err
    assert main(["encode", "-i", "/no/such/file"]) == 2
    assert main(["encode", "x", "--model", "/no/such/model"]) == 2


def test_invalid_utf8_file(tmp_path, capsys):
    source = tmp_path / "bad.txt"
    source.write_bytes(b"fine\n\xff\xfe broken\n")
    assert main(["encode", "-i", str(source), "--no-progress"]) == 2
    assert "not valid UTF-8" in capsys.readouterr().err


def test_info(capsys):
    assert main(["info"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["model"] == "minishlab/potion-base-8M" and facts["dimension"] == 256


@pytest.mark.parametrize("argv", [["--version"], ["encode", "--help"]])
def test_help_and_version(argv):
    result = run_cli(*argv)
    assert result.returncode == 0 and result.stdout


def test_env_turns_on_rays_token_auth_and_names_the_token_file_never_the_token(tmp_path, capsys):
    """Ray 2.60 starts heads with token authentication: every node needs the mode and the same token."""
    token = tmp_path / "ray-token"
    token.write_text("s3cret-token-value")
    assert main(["env", "--auth-token-file", str(token)]) == 0
    printed = capsys.readouterr().out
    assert "export RAY_AUTH_MODE=token" in printed.splitlines()
    assert f"export RAY_AUTH_TOKEN_PATH={token.resolve()}" in printed.splitlines()
    assert "s3cret-token-value" not in printed
    assert main(["env", "--auth", "disabled"]) == 0
    printed = capsys.readouterr().out
    assert "export RAY_AUTH_MODE=disabled" in printed.splitlines() and "RAY_AUTH_TOKEN" not in printed


def test_grpc_port_flag_reaches_the_settings(capsys):
    """--grpc-port is a Settings field like the other limits (default off), and TEI's gRPC API runs beside each
    replica's own HTTP server: another ingress is refused before any Ray starts."""
    from swiftembed.cli import build_parser, settings_from_args
    from swiftembed.service.settings import Settings

    assert Settings().grpc_port is None
    args = build_parser().parse_args(["serve", "--grpc-port", "50051"])
    assert settings_from_args(args).grpc_port == 50051
    assert main(["serve", "--grpc-port", "0"]) == 2
    assert "grpc_port must be a TCP port" in capsys.readouterr().err
    assert main(["serve", "--ingress", "proxy", "--grpc-port", "50051"]) == 2
    assert "--grpc-port needs the replica ingress" in capsys.readouterr().err
