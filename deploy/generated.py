"""The command line shared by the scripts that generate checked-in files (dashboard, PrometheusRule)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(output: Path, render: Callable[[], str], command: str, description: str | None,
                   argv: list[str] | None = None) -> int:
    """Write `output` from `render()`, or with --check exit 1 if the checked-in file differs."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help=f"exit 1 if {output.name} is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not output.exists() or output.read_text() != text:
            print(f"{output} is out of date: run {command}", file=sys.stderr)
            return 1
        return 0
    output.write_text(text)
    print(f"wrote {output}")
    return 0
