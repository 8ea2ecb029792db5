"""``rsna inspect SERIES_DIR``: print what the DICOM reader makes of one series folder."""

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from rsna.dicom import inspect_series

logger = logging.getLogger(__name__)

EXIT_VOLUME = 0
EXIT_REJECTED = 1
EXIT_USAGE = 2
# Decimals of the floats printed. Spacings computed from positions carry rounding noise
# such as 1.7900000000000003; six decimals are a nanometre, far below any voxel size.
DISPLAY_DECIMALS = 6


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``inspect`` subcommand."""
    parser = subparsers.add_parser(
        "inspect",
        help="read one DICOM series folder and print a JSON report",
        description=(
            "Read one DICOM series folder as the pipeline does and print one JSON object: "
            "verdict (volume or rejected), reason (why the series was rejected, or what "
            "the reader corrected in a volume), shape and spacing_mm (z, y, x) as "
            "acquired, canonical_shape and canonical_spacing_mm after reorientation to "
            "LPS, modality, transfer_syntaxes, dropped files or groups, and warnings. "
            "For a volume, warnings repeat the corrections of reason after 'corrected: '. "
            f"Floats are rounded to {DISPLAY_DECIMALS} decimals. "
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
    print(json.dumps(rounded_for_display(report), indent=2))
    return EXIT_VOLUME if report["verdict"] == "volume" else EXIT_REJECTED


def rounded_for_display(value: Any) -> Any:
    """Return a copy of nested dicts and lists with every float rounded to DISPLAY_DECIMALS."""
    if isinstance(value, float):
        return round(value, DISPLAY_DECIMALS)
    if isinstance(value, dict):
        return {key: rounded_for_display(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [rounded_for_display(item) for item in value]
    return value
