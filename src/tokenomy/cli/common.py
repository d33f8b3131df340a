"""Helpers shared by sub-commands: loading the config, opening the database."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from sqlalchemy import Engine

from tokenomy.config import Config, ConfigError, load_config
from tokenomy.store.db import migrate, open_engine


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", metavar="FILE", help="YAML config (default: the packaged default config)"
    )


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"tokenomy: {message}", file=sys.stderr)
    sys.exit(code)


def config_from(args: argparse.Namespace) -> Config:
    try:
        return load_config(args.config)
    except ConfigError as e:
        fail(str(e))


def database(cfg: Config) -> Engine:
    engine = open_engine(cfg.database.url)
    migrate(engine)
    return engine
