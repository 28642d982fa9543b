"""The command line of a generated, committed file: write it, or `--check` that the committed one is current.

    def main(argv: list[str] | None = None) -> int:
        return write_or_check("python -m pipeline.api.asyncapi", __doc__, DOCS_FILE, lambda: text, argv)

Exit status 0 when written or current, 1 when `--check` finds the file stale (the test of each
generated file calls `main(["--check"])`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def write_or_check(
    prog: str, doc: str | None, default_path: Path, text: Callable[[], str], argv: list[str] | None = None
) -> int:
    summary = (doc or "").strip().splitlines()[0] if doc and doc.strip() else None
    parser = argparse.ArgumentParser(prog=prog, description=summary)
    parser.add_argument("path", nargs="?", type=Path, default=default_path)
    parser.add_argument("--check", action="store_true", help="fail if the file differs instead of writing it")
    args = parser.parse_args(argv)
    content = text()
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current != content:
            print(f"{args.path} is stale: run `{prog}`", file=sys.stderr)
            return 1
        return 0
    args.path.write_text(content)
    print(f"wrote {args.path}")
    return 0
