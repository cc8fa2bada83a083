"""``python -m birdsdao.train <command> --help``: one sub-command per module."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": "train",
    "prune": "prune",
    "evaluate": "evaluate",
    "export": "export",
    "finetune-llm": "finetune_llm",
    "score": "score",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m birdsdao.train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"birdsdao.train.{module}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    try:
        return args._run(args)
    except ValueError as exc:  # library code raises; only this entry point turns it into an exit code
        raise SystemExit(str(exc)) from exc


if __name__ == "__main__":
    main(sys.argv[1:])
