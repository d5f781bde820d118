"""``python -m harness report PATH``: regenerate report.md from a run's results.h5."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="regenerate report.md of a run")
    report.add_argument("path", help="a run folder (reports/<run>) or its results.h5")
    listing = commands.add_parser("list", help="list the registered data sets, models, methods and metrics")
    listing.add_argument("--plugin", action="append", default=[], help="module to import first (repeatable)")
    args = parser.parse_args(argv)
    if args.command == "report":
        from harness.report import write_report

        try:
            print(write_report(args.path))
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    import importlib

    import harness

    for module in args.plugin:
        importlib.import_module(module)
    for title, registry in (("datasets", harness.DATASETS), ("models", harness.MODELS),
                            ("methods", harness.METHODS), ("metrics", harness.METRICS)):
        print(f"{title}: {', '.join(registry.names())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
