"""``rsna predict``: aneurysm probabilities for DICOM series folders from a trained checkpoint.

The help text, :data:`DESCRIPTION`, states the inputs, outputs and exit statuses.
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
from rsna.evaluation import EvaluateSettings
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

DESCRIPTION = """\
Score DICOM series folders with a trained checkpoint.

Writes one row per series: SeriesInstanceUID, the 14 label probabilities in the
challenge's column order, and status ("ok", or the reason the row contains the
training-set prevalence instead of a prediction, with the files the reader dropped).
The output is CSV, or parquet for a .parquet or .pq file name.

A PATH that directly contains DICOM files is one series; otherwise each of its
subfolders is a series. Preprocessing and model settings come from the checkpoint.
Flip averaging and the precision of the forward pass come from evaluate.tta_flip and
evaluate.precision of the params file, so that the probabilities match the evaluate
stage's predictions.csv; --tta-flip, --no-tta-flip and --precision override them.
Without a params file or an evaluate section, flip averaging is on and the precision
is float32. Where the params file's preprocess and train settings differ from the
checkpoint's, a warning lists them; the checkpoint's settings are used.

Exit status: 0 when every series got a row (scored or fallback), 1 for an unusable
checkpoint, 2 for a usage error or an invalid params file.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``rsna predict`` and its options."""
    parser = subparsers.add_parser(
        "predict",
        help="score DICOM series folders with a trained checkpoint",
        description=DESCRIPTION,
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
        action=argparse.BooleanOptionalAction,
        help="average with the left-right mirrored volume, Left/Right labels swapped back "
        "(default: evaluate.tta_flip of the params file, else on)",
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
        help="floating-point type of the forward pass; bfloat16 and float16 run under "
        "autocast (default: evaluate.precision of the params file, else float32)",
    )

    parser.add_argument(
        "--params",
        help="params file whose evaluate.tta_flip and evaluate.precision are used, and "
        "whose preprocess and train settings are compared with the checkpoint's "
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
        params = load_params(params_file) if params_file is not None else {}
        settings = evaluate_settings(params, params_file=params_file)
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
        _log_params_differences(model, params, params_file)

    tta_flip = settings.tta_flip if args.tta_flip is None else args.tta_flip
    precision = settings.precision if args.precision is None else args.precision
    logger.info("Flip averaging %s, precision %s", "on" if tta_flip else "off", precision)
    predictions = predict_series_dirs(
        model,
        series_dirs,
        batch_size=args.batch_size,
        workers=args.workers,
        tta_flip=tta_flip,
        dtype=PRECISION_DTYPES[precision],
    )
    write_predictions(predictions_frame(predictions), args.out)
    logger.info("Wrote %d rows to %s", len(predictions), args.out)
    return 0


def evaluate_settings(params: dict[str, Any], *, params_file: Path | None) -> EvaluateSettings:
    """Return the ``evaluate`` section of ``params``, or the defaults when it has none.

    Raises :class:`rsna.config.ParamsError` for an invalid section, because its
    ``tta_flip`` and ``precision`` decide the predictions.
    """
    section = params.get("evaluate")
    if section is None:
        if params_file is not None:
            logger.info("%s has no evaluate section; using the defaults", params_file)
        return EvaluateSettings()
    if not isinstance(section, dict):
        raise ParamsError(
            f"params file {params_file} has evaluate {section!r}, expected a mapping of keys"
        )
    return section_to_dataclass(EvaluateSettings, section, section="evaluate")


def _log_params_differences(
    model: InferenceModel, params: dict[str, Any], params_file: Path
) -> None:
    """Log where the params file's settings differ from the checkpoint's, which win."""
    try:
        current = _current_params(params)
    except ParamsError as error:
        # These settings only feed this comparison, so a broken section must not stop scoring.
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
