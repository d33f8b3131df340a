"""The ``tokenomy`` command: thin sub-commands over the same services the HTTP API uses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tokenomy.cli import (
    batches_cmd,
    dead_letters_cmd,
    jobs_cmd,
    keys_cmd,
    ledger_cmd,
    plan_cmd,
    prices_cmd,
    router_cmd,
    serve_cmd,
    usage_cmd,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenomy",
        description="An OpenAI- and Anthropic-compatible gateway that meters, bills and routes "
        "LLM tokens.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd.register(sub)
    keys_cmd.register(sub)
    ledger_cmd.register(sub)
    prices_cmd.register(sub)
    plan_cmd.register(sub)
    usage_cmd.register(sub)
    dead_letters_cmd.register(sub)
    router_cmd.register(sub)
    batches_cmd.register(sub)
    jobs_cmd.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
