"""``rsna sample OUT_DIR``: write the synthetic sample dataset in the challenge layout."""

import argparse
import json
import logging
from pathlib import Path

from rsna.config import load_section, resolve_params_file, section_to_dataclass
from rsna.sample import SampleSettings, write_sample_dataset
from rsna.signals import sigterm_raises

logger = logging.getLogger(__name__)

EXIT_USAGE = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``sample`` subcommand."""
    parser = subparsers.add_parser(
        "sample",
        help="write a synthetic dataset in the challenge layout",
        description=(
            "Write train.csv, train_localizers.csv and series/<SeriesInstanceUID>/*.dcm of "
            "a synthetic dataset: CTA and MR series of a head with a circle of Willis and "
            "aneurysms at the labelled locations. The same seed gives byte-identical files. "
            "Defaults come from the sample section of the params file, else built-in values. "
            "Prints a JSON summary: series, patients, files and positives per location."
        ),
    )
    parser.add_argument(
        "out_dir",
        metavar="OUT_DIR",
        help="folder to write: absent, empty or an earlier dataset (replaced whole)",
    )
    parser.add_argument("--series", type=int, help="number of series (default: params file, 300)")
    parser.add_argument("--seed", type=int, help="generator seed (default: params file, 2025)")
    parser.add_argument(
        "--workers", type=int, help="processes; 0 = one per CPU core (default: params file, 0)"
    )
    parser.add_argument(
        "--matrix", type=int, help="Rows and Columns of every series, for quick test data"
    )
    parser.add_argument("--slices", type=int, help="slices of every series, for quick test data")
    parser.add_argument(
        "--params", help="params file to read defaults from (default: ./params.yaml if present)"
    )
    parser.set_defaults(run=run)


def _check_replaceable(out_dir: Path) -> None:
    """Raise ValueError unless ``out_dir`` is absent, empty or an earlier dataset.

    The dataset replaces the folder whole, so a mistyped path must not delete other data.
    """
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"OUT_DIR {out_dir} is a file; choose a folder path")
    if any(out_dir.iterdir()) and not (out_dir / "train.csv").is_file():
        raise ValueError(
            f"OUT_DIR {out_dir} is not empty and holds no train.csv, so it is not an earlier "
            "dataset; the sample replaces the folder whole, so choose an empty or new folder"
        )


def run(args: argparse.Namespace) -> int:
    """Write the dataset and print its summary; return 0, or 2 for an invalid option."""
    try:
        _check_replaceable(Path(args.out_dir))
        settings = _settings(args)
        with sigterm_raises():
            summary = write_sample_dataset(
                args.out_dir,
                series=settings.series,
                seed=settings.seed,
                workers=settings.workers,
                matrix=args.matrix,
                slices=args.slices,
            )
    except ValueError as error:
        logger.error("%s", error)
        return EXIT_USAGE
    report = {
        "root": str(summary.root),
        "series": summary.series,
        "patients": summary.patients,
        "files": summary.files,
        "positives_per_location": summary.positives_per_location,
    }
    print(json.dumps(report, indent=2))
    return 0


def _settings(args: argparse.Namespace) -> SampleSettings:
    """Return the params file's sample section (or the defaults) with the options applied."""
    params_file = resolve_params_file(args.params)
    values = load_section(params_file, "sample") if params_file else {}
    for name in ("series", "seed", "workers"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    return section_to_dataclass(SampleSettings, values, section="sample")
