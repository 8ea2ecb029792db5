"""The ``rsna`` command: parse arguments, then hand over to one subcommand module.

Each subcommand lives in ``rsna/commands/<name>.py`` and defines ``add_parser(subparsers)``,
which registers its parser and calls ``parser.set_defaults(run=run)``, and
``run(args) -> int``. This module only parses, configures logging and maps errors
to exit statuses: 0 success, 1 a result the subcommand reports as failed (for example a
rejected series), 2 a usage error.
"""

import argparse
import importlib
import logging
import sys

from rsna.config import ParamsError
from rsna.logs import configure_logging

logger = logging.getLogger(__name__)

SUBCOMMANDS = ("sample", "inspect", "preprocess", "predict")
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with one sub-parser per subcommand module."""
    parser = argparse.ArgumentParser(
        prog="rsna", description="Intracranial aneurysm detection pipeline tools."
    )
    parser.add_argument(
        "--log-level", default="INFO", help="logging level: DEBUG, INFO, WARNING or ERROR"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"rsna.commands.{name}")
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``rsna`` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level.upper())

    try:
        return args.run(args)
    except ParamsError as error:
        logger.error("%s", error)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
