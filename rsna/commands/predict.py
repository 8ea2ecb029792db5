"""``rsna predict``: aneurysm probabilities for DICOM series folders from a trained checkpoint.

Writes one row per series: SeriesInstanceUID, the 14 label probabilities in the
challenge's column order, and ``status`` (``ok``, or the reason the row contains the
training-set prevalence instead of a prediction). The output is CSV, or parquet for a
``.parquet`` or ``.pq`` file name.

A PATH that directly contains DICOM files is one series; otherwise each of its
subfolders is a series. Preprocessing and model settings come from the checkpoint; a
params file is read only to log where it differs.

Exit status: 0 when every series got a row (scored or fallback), 1 for an unusable
checkpoint, 2 for a usage error.
"""

import argparse
import logging
from pathlib import Path
from typing import Any

from rsna.config import (
    ParamsError,
    load_params,
    resolve_params_file,
    section_to_dataclass,
)
from rsna.fileio import OutputPathError, check_output_folder
from rsna.inference.checkpoint import (
    InferenceModel,
    current_inference_params,
    params_differences,
    read_inference_model,
)
from rsna.inference.runner import (
    OutputFormatError,
    output_format,
    predict_series_dirs,
    predictions_frame,
    write_predictions,
)
from rsna.inference.series import SeriesPathError, find_series_dirs
from rsna.preprocess.settings import PreprocessParams
from rsna.training.checkpoint import CheckpointError
from rsna.training.distributed import resolve_device
from rsna.training.optimization import PRECISION_DTYPES
from rsna.training.settings import train_settings_from_section

logger = logging.getLogger(__name__)

EXIT_CHECKPOINT = 1
EXIT_USAGE = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``rsna predict`` and its options."""
    parser = subparsers.add_parser(
        "predict",
        help="score DICOM series folders with a trained checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="a series folder, or a folder whose subfolders are series folders",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file (.pt)")
    parser.add_argument(
        "--out", required=True, type=Path, help="output file: .csv, .parquet or .pq"
    )

    parser.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when available)"
    )
    parser.add_argument(
        "--tta-flip",
        action="store_true",
        help="average with the left-right mirrored volume, Left/Right labels swapped back",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=1, help="series per forward pass (>= 1)"
    )
    parser.add_argument(
        "--workers",
        type=_non_negative_int,
        default=0,
        help="processes that read and preprocess series (0: the main process)",
    )
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISION_DTYPES),
        default="float32",
        help="floating-point type of the forward pass; bfloat16 and float16 run under autocast",
    )

    parser.add_argument(
        "--params",
        help="params file to compare with the checkpoint's settings, for the log only "
        "(default: ./params.yaml when present)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Score the series of ``args.paths`` and write ``args.out``; return the exit status."""
    try:
        output_format(args.out)
        check_output_folder(Path(args.out).parent)
        series_dirs = find_series_dirs(args.paths)
        params_file = resolve_params_file(args.params)
        device = resolve_device(args.device)
    except (OutputFormatError, OutputPathError, SeriesPathError, ParamsError) as error:
        logger.error("%s", error)
        return EXIT_USAGE
    except RuntimeError as error:
        logger.error("invalid --device %r: %s", args.device, error)
        return EXIT_USAGE

    try:
        model = read_inference_model(args.checkpoint, device=device)
    except CheckpointError as error:
        logger.error("%s", error)
        return EXIT_CHECKPOINT
    if params_file is not None:
        _log_params_differences(model, params_file)

    predictions = predict_series_dirs(
        model,
        series_dirs,
        batch_size=args.batch_size,
        workers=args.workers,
        tta_flip=args.tta_flip,
        dtype=PRECISION_DTYPES[args.precision],
    )
    write_predictions(predictions_frame(predictions), args.out)
    logger.info("Wrote %d rows to %s", len(predictions), args.out)
    return 0


def _log_params_differences(model: InferenceModel, params_file: Path) -> None:
    """Log where the params file's settings differ from the checkpoint's, which win."""
    try:
        current = _current_params(load_params(params_file))
    except ParamsError as error:
        # The params file only feeds this comparison, so a broken one must not stop scoring.
        logger.warning("Settings of %s not compared with the checkpoint: %s", params_file, error)
        return

    differences = params_differences(model, current=current)
    if differences:
        logger.warning(
            "Checkpoint %s was trained with settings that differ from %s; inference uses "
            "the checkpoint's (checkpoint -> %s): %s",
            model.path,
            params_file,
            params_file,
            "; ".join(differences),
        )
    else:
        logger.info("Checkpoint settings match %s", params_file)


def _current_params(params: dict[str, Any]) -> dict[str, Any]:
    """Return the preprocess and model settings of a params file, as far as it has them."""
    spec = settings = None
    if isinstance(params.get("preprocess"), dict):
        preprocess = section_to_dataclass(
            PreprocessParams, params["preprocess"], section="preprocess"
        )
        spec = preprocess.volume_spec()
    if isinstance(params.get("train"), dict):
        settings = train_settings_from_section(params["train"])
    return current_inference_params(
        spec=spec,
        model=settings.model if settings else None,
        input_shape=settings.input_shape if settings else None,
    )


def _positive_int(text: str) -> int:
    return _integer_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _integer_at_least(text, 0)


def _integer_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
    return value
