"""rsna preprocess: DICOM series folders -> float16 training volumes, outside DVC.

Runs the same code as the preprocess stage. For each folder it writes
<SeriesInstanceUID>.npy into --out, plus index.jsonl (one record per volume),
incremental_state.jsonl (the fingerprint of each volume, unless --state names another
file) and rejects.jsonl (one line per series that could not be used). Running it again on
the same folder skips the series whose volume is current. The output folder mirrors the
last run: volumes that an earlier run wrote there for series not given again are deleted,
so use one output folder per set of series. SIGTERM stops it as Ctrl-C does: the workers
are terminated, partial files removed, and the exit status is 143.
"""

import argparse
import dataclasses
import logging
from pathlib import Path

from rsna.config import ParamsError, load_section, resolve_params_file, section_to_dataclass
from rsna.fileio import OutputPathError, check_output_folder
from rsna.preprocess.runner import preprocess_dataset
from rsna.preprocess.series import SeriesJob
from rsna.preprocess.settings import DEFAULT_PARAMS, PreprocessParams
from rsna.preprocess.state import DEFAULT_STATE_NAME
from rsna.signals import sigterm_raises

logger = logging.getLogger(__name__)

INDEX_NAME = "index.jsonl"
REJECTS_NAME = "rejects.jsonl"
EXIT_REJECTED = 1
EXIT_USAGE = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``rsna preprocess`` and its options."""
    parser = subparsers.add_parser(
        "preprocess",
        help="turn DICOM series folders into float16 .npy volumes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("series_dirs", nargs="+", type=Path, metavar="SERIES_DIR")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--state",
        type=Path,
        help="incremental state file, which lists the fingerprint of every volume "
        f"(default: OUT/{DEFAULT_STATE_NAME})",
    )
    parser.add_argument(
        "--params",
        help="params file whose preprocess section is used "
        "(default: ./params.yaml when present, else built-in defaults)",
    )
    parser.add_argument(
        "--spacing-mm", nargs=3, type=float, metavar=("Z", "Y", "X"), help="target spacing in mm"
    )
    parser.add_argument(
        "--shape", nargs=3, type=int, metavar=("Z", "Y", "X"), help="saved shape in voxels"
    )
    parser.add_argument(
        "--ct-window-hu", nargs=2, type=float, metavar=("LOWER", "UPPER"), help="CT window in HU"
    )
    parser.add_argument(
        "--mr-percentiles",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="MR percentiles (in percent) mapped to 0 and 1",
    )
    parser.add_argument("--workers", type=int, help="worker processes; 0: one per CPU core")
    parser.add_argument("--threads-per-worker", type=int, help="torch threads of each worker")
    parser.add_argument(
        "--force", action="store_true", help="reprocess every series, even up-to-date ones"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Preprocess the folders; return 0, or 1 when a series was rejected.

    SIGTERM raises :class:`rsna.signals.Terminated`, which exits with status 143.
    """
    try:
        check_output_folder(args.out)
    except OutputPathError as error:
        logger.error("%s", error)
        return EXIT_USAGE
    params = _params_from_args(args)
    jobs = [SeriesJob(series_dir=folder) for folder in args.series_dirs]

    with sigterm_raises():
        summary = preprocess_dataset(
            jobs,
            out_dir=args.out,
            index_path=args.out / INDEX_NAME,
            state_path=args.state or args.out / DEFAULT_STATE_NAME,
            rejects_path=args.out / REJECTS_NAME,
            spec=params.volume_spec(),
            workers=params.workers,
            threads_per_worker=params.threads_per_worker,
            force=args.force,
        )
    if summary.rejects:
        logger.error(
            "%d of %d series rejected; reasons in %s",
            len(summary.rejects),
            len(jobs),
            args.out / REJECTS_NAME,
        )
        return EXIT_REJECTED
    return 0


def _params_from_args(args: argparse.Namespace) -> PreprocessParams:
    """Return the params of ``--params`` (or the defaults) with the flags applied on top."""
    params_file = resolve_params_file(args.params)
    if params_file is None:
        params = DEFAULT_PARAMS
    else:
        section = load_section(params_file, "preprocess")
        params = section_to_dataclass(PreprocessParams, section, section="preprocess")

    overrides = {
        name: tuple(value) if isinstance(value, list) else value
        for name in (
            "spacing_mm",
            "shape",
            "ct_window_hu",
            "mr_percentiles",
            "workers",
            "threads_per_worker",
        )
        if (value := getattr(args, name)) is not None
    }
    try:
        return dataclasses.replace(params, **overrides)
    except ValueError as error:
        raise ParamsError(f"invalid preprocess option: {error}") from error
