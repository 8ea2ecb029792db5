"""``rsna inspect SERIES_DIR``: print what the DICOM reader makes of one series folder."""

import argparse
import json
import logging
from pathlib import Path

from rsna.dicom import inspect_series

logger = logging.getLogger(__name__)

EXIT_VOLUME = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``inspect`` subcommand."""
    parser = subparsers.add_parser(
        "inspect",
        help="read one DICOM series folder and print a JSON report",
        description=(
            "Read one DICOM series folder as the pipeline does and print one JSON object: "
            "verdict (volume or rejected), reason, shape and spacing_mm (z, y, x) as "
            "acquired, canonical_shape and canonical_spacing_mm after reorientation to "
            "LPS, modality, transfer_syntaxes, dropped files or groups, and warnings. "
            "Exit status 0 for a volume, 1 for a rejected series, 2 for a usage error."
        ),
    )
    parser.add_argument(
        "series_dir", metavar="SERIES_DIR", help="folder of one series' DICOM files"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the report of ``args.series_dir`` and return the exit status."""
    series_dir = Path(args.series_dir)
    if not series_dir.is_dir():
        logger.error("%s is not a folder; pass a series folder", series_dir)
        return EXIT_USAGE
    report = inspect_series(series_dir)
    print(json.dumps(report, indent=2))
    return EXIT_VOLUME if report["verdict"] == "volume" else EXIT_REJECTED
