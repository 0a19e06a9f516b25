"""Command line: ``unlearnkit run | methods`` (and the evaluation commands).

Bad input ends with one line on stderr naming the problem and the fix, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

from unlearnkit.errors import UserError


def _cmd_run(args: argparse.Namespace) -> int:
    from unlearnkit.config import load_config
    from unlearnkit.train import train

    config = load_config(args.config, args.overrides)
    result = train(config, resume=args.resume)
    print(f"unlearned for {result.steps} steps ({result.stop_reason}) in {result.seconds:.1f}s -> {result.output_dir}")
    if result.last_log:
        last = result.last_log
        print(f"last step: forget_nll {last['forget_nll']:.3f}  loss {last['loss']:.4f}")
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from unlearnkit.methods import METHODS

    for name, method in METHODS.items():
        print(f"{name:<16} {method.summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from unlearnkit import __version__
    from unlearnkit.config import describe_fields

    parser = argparse.ArgumentParser(prog="unlearnkit", description="Make a language model forget specific outputs.")
    parser.add_argument("--version", action="version", version=f"unlearnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="unlearn: train a model to forget the forget set",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Unlearn with a YAML config plus key=value overrides (bare field name or section.field).",
        epilog="config fields (key  type  default: meaning):\n" + describe_fields(),
    )
    run.add_argument("--config", help="YAML preset (e.g. configs/smoke.yaml); defaults are the paper's")
    run.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. max_steps=10 lora=true")
    run.set_defaults(handler=_cmd_run)

    methods = sub.add_parser("methods", help="list the unlearning methods")
    methods.set_defaults(handler=_cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UserError as exc:
        print(f"unlearnkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("unlearnkit: interrupted (use --resume to continue from the last checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
